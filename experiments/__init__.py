"""Experiments and benchmarks of svd_callback, run from the repository root as
``python -m experiments.<name>.run`` (see the README, "Experiments and benchmarks")."""
