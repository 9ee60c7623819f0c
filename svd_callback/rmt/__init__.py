"""Heavy-tailed random-matrix metrics of eigenvalue spectra."""

from svd_callback.rmt.metrics import (
    QUALITY_LABELS,
    ESDMetrics,
    QualityThresholds,
    esd_metrics,
    quality_label,
)
from svd_callback.rmt.mp import (
    MPFit,
    fit_mp_bulk,
    mp_edges,
    random_stable_rank,
    tracy_widom_margin,
)
from svd_callback.rmt.powerlaw import PowerLawFit, fit_power_law, fit_power_law_many, hill_alpha
from svd_callback.rmt.traps import js_distance, shuffle_matrix, trap_matrix, trap_metrics

__all__ = [
    "ESDMetrics",
    "MPFit",
    "PowerLawFit",
    "QUALITY_LABELS",
    "QualityThresholds",
    "esd_metrics",
    "fit_mp_bulk",
    "fit_power_law",
    "fit_power_law_many",
    "hill_alpha",
    "js_distance",
    "mp_edges",
    "quality_label",
    "random_stable_rank",
    "shuffle_matrix",
    "tracy_widom_margin",
    "trap_matrix",
    "trap_metrics",
]
