"""Benchmarks and probes, outside the product package; run from the repo root as ``python -m bench.<name>``."""
