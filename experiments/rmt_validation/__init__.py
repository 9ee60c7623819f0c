"""The rmt_validation experiment: ``python -m experiments.rmt_validation.run``."""
