"""svd-callback: follow the SVD of every conv and linear layer through training.

``SpectralMonitor`` is the Lightning callback; ``analyze`` runs the same analysis offline.
"""

from svd_callback.analysis import analyze, summarize
from svd_callback.report import LayerReport, Report

__all__ = ["LayerReport", "Report", "analyze", "summarize"]
__version__ = "0.1.0"
