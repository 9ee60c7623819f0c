"""Default alert rules replayed on saved digits-CNN histories:
``python -m experiments.alert_rules.replay``."""
