"""Prefect flows over the DVC pipeline: the same stages, run through DVC (its cache decides what is up to date)."""
