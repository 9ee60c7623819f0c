"""Which of an analysis's scalars reach the loggers: fewer, non-redundant charts by default.

- The ``"motion"`` metrics are the weight's own (the same in every conv mode): logged under
  the primary mode's tags only.
- Layers without a conv mode (linear, embedding, attention: every kind not ``conv*``) have the
  same matrix, hence the same values, in every conv mode: they are logged once, under the
  primary mode's tags ``spectral/<metric>/<layer>``.
- Model-level aggregates: only the statistics of ``MonitorConfig.summary_stats`` (default the
  mean over analysed layers, ``spectral_summary/<metric>_mean``, the aggregate WeightWatcher's
  summary reports and the alert rule ``MeanAlphaTrend`` reads).
- :data:`CONSTANT_METRICS` (``matrix_rank``, ``rank_loss``: constant in ordinary training, a
  flat chart each) only with ``MonitorConfig.constant_metrics``; the alert rules and the history
  file see them regardless.
"""

from __future__ import annotations

from svd_callback.config import MonitorConfig
from svd_callback.monitor.result import AnalysisResult
from svd_callback.motion import MOTION_METRICS
from svd_callback.sinks import tags

__all__ = [
    "CONSTANT_METRICS", "SUMMARY_STATS", "drop_redundant", "logged_metric_names",
    "mode_independent",
]

CONSTANT_METRICS = ("matrix_rank", "rank_loss")
"""Metrics that are constant in ordinary training (logged on request only)."""

SUMMARY_STATS = ("mean", "median")
"""The aggregates over layers that :func:`svd_callback.analysis.summarize` computes."""


def logged_metric_names(config: MonitorConfig) -> tuple[str, ...]:
    """The per-layer metrics that can reach the loggers: those of the selected groups, less
    ``alpha_hill`` unless ``fit="hill"`` (the only fit that computes it) and less
    :data:`CONSTANT_METRICS` unless ``constant_metrics``."""
    analysis = config.analysis
    hidden = set() if config.constant_metrics else set(CONSTANT_METRICS)
    if analysis.fit != "hill":
        hidden.add("alpha_hill")
    return tuple(m for m in analysis.metric_names if m not in hidden)


def mode_independent(kind: str) -> bool:
    """A layer kind whose matrix does not depend on the conv mode (every kind but ``conv*``)."""
    return not kind.startswith("conv")


def drop_redundant(
    values: dict[str, float],
    descriptions: dict[str, str],
    result: AnalysisResult,
    config: MonitorConfig,
) -> None:
    """Remove from ``values`` and ``descriptions`` (in place) the repeated, constant and
    not-selected aggregate tags described in the module docstring."""
    analysis = config.analysis
    primary = analysis.primary_mode
    hidden = set() if config.constant_metrics else set(CONSTANT_METRICS)
    drop: set[str] = set()
    for record in result.report:
        repeated = record.mode != primary and mode_independent(record.kind)
        for metric in analysis.metric_names:
            if repeated or metric in hidden or (record.mode != primary
                                                and metric in MOTION_METRICS):
                drop.add(tags.layer_tag(metric, record.name, record.mode, primary))
    unwanted = [s for s in SUMMARY_STATS if s not in config.summary_stats]
    for mode, aggregates in result.summary.items():
        for key in aggregates:
            base, _, stat = key.rpartition("_")
            if stat in unwanted or (stat in SUMMARY_STATS and base in hidden):
                drop.add(tags.summary_tag(key, mode, primary))
    for tag in drop:
        values.pop(tag, None)
        descriptions.pop(tag, None)
