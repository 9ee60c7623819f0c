"""Timing benchmarks: ``python -m experiments.benchmarks.<name>``."""
