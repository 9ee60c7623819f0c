"""The model-level aggregates over layers: their keys and what each one is.

:func:`svd_callback.analysis.summarize` computes them per conv mode; the summary of an analysis
maps each key to its value (``{"alpha_mean": 3.1, "n_layers": 4.0, ...}``). Every key is
declared here once, with what it aggregates, so that no reader takes a key apart again:

- ``<metric>_<stat>``: the statistic ``stat`` (:data:`SUMMARY_STATS`) over the analysed layers
  with a finite value of ``metric`` (:data:`SUMMARY_METRICS`);
- ``n_layers``, ``n_skipped``: the layers analysed and skipped;
- ``frac_<label>``: the fraction of the fitted layers with a quality label
  (:data:`FRACTION_LABELS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AGGREGATES",
    "FRACTION_LABELS",
    "N_LAYERS",
    "N_SKIPPED",
    "SUMMARY_METRICS",
    "SUMMARY_STATS",
    "Aggregate",
    "aggregate",
    "fraction_of",
    "statistic",
]

SUMMARY_METRICS: tuple[str, ...] = (
    "alpha",
    "alpha_weighted",
    "log_alpha_norm",
    "log_norm",
    "log_spectral_norm",
    "stable_rank",
    "entropy",
    "spectral_norm",
    "rank_loss",
    "mp_softrank",
    "num_spikes",
    "num_traps",
    "rand_distance",
    "weight_motion",
    "weight_rotation",
)
"""The per-layer metrics aggregated over the layers."""

SUMMARY_STATS: tuple[str, ...] = ("mean", "median")
"""The statistics over layers, in the order computed (``summary_stats`` picks the logged ones)."""

FRACTION_LABELS: tuple[str, ...] = ("over-trained", "under-trained")
"""The quality labels whose share of the fitted layers is an aggregate."""


@dataclass(frozen=True)
class Aggregate:
    """One model-level aggregate.

    Attributes:
        key: its name in a summary (``alpha_mean``, ``n_layers``, ``frac_over_trained``).
        kind: ``"statistic"`` (of a metric over layers), ``"count"`` or ``"fraction"``.
        metric: the per-layer metric of a statistic (None otherwise).
        stat: ``"mean"`` or ``"median"`` for a statistic (None otherwise).
        label: the quality label of a fraction (None otherwise).
        text: what a count is, in words (the description of the others is built from their
            metric or label).
    """

    key: str
    kind: Literal["statistic", "count", "fraction"]
    metric: str | None = None
    stat: str | None = None
    label: str | None = None
    text: str = ""


def statistic(metric: str, stat: str) -> Aggregate:
    """``<metric>_<stat>``, e.g. ``alpha_mean``."""
    return Aggregate(f"{metric}_{stat}", "statistic", metric=metric, stat=stat)


def fraction_of(label: str) -> Aggregate:
    """``frac_<label>`` with ``-`` as ``_``, e.g. ``frac_over_trained``."""
    return Aggregate(f"frac_{label.replace('-', '_')}", "fraction", label=label)


N_LAYERS = Aggregate("n_layers", "count", text="number of layers analysed")
N_SKIPPED = Aggregate("n_skipped", "count",
                      text="number of layers skipped (reasons in the history file)")

AGGREGATES: dict[str, Aggregate] = {
    a.key: a
    for a in (
        N_LAYERS,
        N_SKIPPED,
        *(statistic(m, s) for m in SUMMARY_METRICS for s in SUMMARY_STATS),
        *(fraction_of(label) for label in FRACTION_LABELS),
    )
}
"""Every aggregate by key."""


def aggregate(key: str) -> Aggregate | None:
    """The declared aggregate of ``key`` (None for a key no summary holds)."""
    return AGGREGATES.get(key)
