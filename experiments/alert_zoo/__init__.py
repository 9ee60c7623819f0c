"""The alert zoo: healthy and deliberately broken training runs (failures from the start or
switched on mid-run) of model/data pairs, some held out from tuning by architecture; each run's
monitor history, losses and gradient/activation probe statistics cached, and the alert rules,
loss baselines and published training-problem detectors scored on them by replay."""
