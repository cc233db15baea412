"""Optimization profiles: the spec, the one declaration of the sets, and first-fit selection."""
