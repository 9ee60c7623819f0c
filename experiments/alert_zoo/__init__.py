"""The alert zoo: healthy and deliberately broken training runs of two model/data pairs,
their spectral histories cached, and the alert rules and loss-based baselines scored on them."""
