"""Serving: request checks for the Triton models and the tritonserver launcher."""
