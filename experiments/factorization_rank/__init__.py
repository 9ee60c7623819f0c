"""The factorization_rank experiment: ``python -m experiments.factorization_rank.run``."""
