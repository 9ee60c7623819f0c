"""The scalars of one analysis by tag, with the description of how each was made
(tags and descriptions: :mod:`svd_callback.sinks.tags`, ``docs/conventions.md``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from svd_callback.config import AnalysisConfig
from svd_callback.monitor.result import AnalysisResult
from svd_callback.sinks import tags

__all__ = [
    "ACTIVE_SEVERITIES",
    "ALERT_ACTIVE_TAG",
    "MODEL_LEVEL_PREFIXES",
    "active_alerts",
    "class_scalars",
    "is_model_level",
    "scalars",
]

ALERT_ACTIVE_TAG = "alerts/active"
"""Alerts of severity warning or stop raised by the latest analysis: 0 while training is
healthy, a stop signal for ``EarlyStopping(monitor="alerts/active", ...)``."""
ACTIVE_SEVERITIES = ("warning", "stop")

MODEL_LEVEL_PREFIXES = ("spectral_summary/",)
"""Tags that always go into ``trainer.callback_metrics`` (with ``alerts/count`` and
``alerts/active``)."""

Scalars = tuple[dict[str, float], dict[str, str]]


def is_model_level(tag: str) -> bool:
    """A model-level value (an aggregate or an alert count), as opposed to a per-layer one."""
    return tag.startswith(MODEL_LEVEL_PREFIXES) or tag in (tags.ALERT_COUNT_TAG, ALERT_ACTIVE_TAG)


def active_alerts(result: AnalysisResult) -> int:
    """``alerts/active = #{a in alerts of the latest analysis : a.severity in (warning, stop)}``.

    Each default rule fires once when its condition has held for ``patience`` consecutive
    analyses (and again only after it cleared), so a healthy run reads 0 at every analysis and
    a run in trouble reads >= 1 at the analyses where a rule fired."""
    return sum(alert.severity in ACTIVE_SEVERITIES for alert in result.alerts)


def scalars(result: AnalysisResult, config: AnalysisConfig, class_conventions: str) -> Scalars:
    """Finite values by tag and their descriptions: ``spectral/<metric>[.<mode>]/<layer>`` of
    the selected metrics, ``spectral_summary/<key>[.<mode>]`` of the selected metrics' aggregates
    (and the counts), ``alerts/count``, ``alerts/active`` and ``classes/<stat>/<layer>``."""
    primary = config.primary_mode
    logged = config.metric_names
    selected = set(logged)
    values: dict[str, float] = {}
    descriptions: dict[str, str] = {}
    for record in result.report:
        if record.skipped:
            continue
        for metric in logged:
            value = record.metrics.get(metric)
            if value is None or not math.isfinite(value):
                continue
            tag = tags.layer_tag(metric, record.name, record.mode, primary)
            values[tag] = float(value)
            descriptions[tag] = tags.metric_description(
                metric, record.mode, record.normalization, config.fit, config.ww_compat
            )
    for mode, aggregates in result.summary.items():
        for key, value in aggregates.items():
            base = key.rsplit("_", 1)[0] if key.endswith(("_mean", "_median")) else None
            if base is not None and base not in selected:
                continue
            if not math.isfinite(value):
                continue
            tag = tags.summary_tag(key, mode, primary)
            values[tag] = float(value)
            descriptions[tag] = tags.summary_description(
                key, mode, config.normalization, config.fit, config.ww_compat
            )
    values[tags.ALERT_COUNT_TAG] = float(len(result.alerts))
    descriptions[tags.ALERT_COUNT_TAG] = "number of spectral alerts raised by this analysis"
    values[ALERT_ACTIVE_TAG] = float(active_alerts(result))
    descriptions[ALERT_ACTIVE_TAG] = (
        "number of alerts of severity warning or stop raised by this analysis (each rule fires "
        "once its condition held for its patience; 0 while training is healthy)"
    )
    class_values, class_descriptions = class_scalars(result.class_metrics, class_conventions)
    values.update(class_values)
    descriptions.update(class_descriptions)
    return values, descriptions


def class_scalars(metrics: Mapping[str, Mapping[str, float]], how: str) -> Scalars:
    """``classes/<stat>/<layer>`` values (finite, per-class keys left out) and descriptions."""
    values: dict[str, float] = {}
    descriptions: dict[str, str] = {}
    for layer, stats in metrics.items():
        for stat, value in stats.items():
            if "/" in stat or not math.isfinite(value):
                continue
            tag = tags.class_tag(stat, layer)
            values[tag] = float(value)
            descriptions[tag] = tags.class_description(stat, how)
    return values, descriptions
