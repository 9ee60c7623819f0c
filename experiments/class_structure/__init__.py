"""The class_structure experiment: ``python -m experiments.class_structure.run``."""
