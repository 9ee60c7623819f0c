"""svd-callback: follow the SVD of every conv and linear layer through training.

``SpectralMonitor`` is the Lightning callback; ``analyze`` runs the same analysis offline, with
the options of an ``AnalysisConfig`` (docs/configuration.md). ``SpectralLRBalancer`` sets
per-layer learning rates from the layers' alphas (TempBalance); ``tempbalance_lrs`` computes them
once (docs/balance.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svd_callback.analysis import analyze, summarize
from svd_callback.balance import tempbalance_lrs
from svd_callback.config import AnalysisConfig
from svd_callback.report import LayerReport, Report

if TYPE_CHECKING:
    from svd_callback.balance.callback import SpectralLRBalancer
    from svd_callback.callback import SpectralMonitor

__all__ = [
    "AnalysisConfig",
    "LayerReport",
    "Report",
    "SpectralLRBalancer",
    "SpectralMonitor",
    "analyze",
    "summarize",
    "tempbalance_lrs",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import the callback (and Lightning) only when it is asked for: ``analyze`` needs neither."""
    if name == "SpectralMonitor":
        from svd_callback.callback import SpectralMonitor

        return SpectralMonitor
    if name == "SpectralLRBalancer":
        from svd_callback.balance.callback import SpectralLRBalancer

        return SpectralLRBalancer
    raise AttributeError(f"module 'svd_callback' has no attribute {name!r}")
