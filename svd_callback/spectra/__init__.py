"""Singular values of conv and linear weights in three conventions (:mod:`.solver`)."""

from svd_callback.spectra.solver import *  # noqa: F403
from svd_callback.spectra.solver import __all__  # noqa: F401
