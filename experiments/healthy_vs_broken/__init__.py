"""The healthy_vs_broken experiment: ``python -m experiments.healthy_vs_broken.run``."""
