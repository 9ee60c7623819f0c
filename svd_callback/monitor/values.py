"""The scalars of one analysis by tag, with the description of how each was made
(tags and descriptions: :mod:`svd_callback.sinks.tags`, ``docs/conventions.md``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from svd_callback.alerts import COUNTED_SEVERITIES
from svd_callback.config import AnalysisConfig
from svd_callback.monitor.result import AnalysisResult
from svd_callback.sinks import tags

__all__ = [
    "ACTIVE_SEVERITIES",
    "ALERT_ACTIVE_TAG",
    "ALERT_RAISED_TAG",
    "HEALTHY_STEP_TAG",
    "MODEL_LEVEL_PREFIXES",
    "active_alerts",
    "class_scalars",
    "healthy_step",
    "is_model_level",
    "raised_alerts",
    "scalars",
]

ALERT_ACTIVE_TAG = "alerts/active"
"""The alert conditions of severity warning or stop in force at the latest analysis (fired and
not cleared): a level, 0 while training is healthy, a stop signal for
``EarlyStopping(monitor="alerts/active", ...)``."""
ALERT_RAISED_TAG = "alerts/raised"
"""The alerts of severity warning or stop raised by the latest analysis: an event count (a rule
fires once per episode)."""
HEALTHY_STEP_TAG = "alerts/healthy_step"
"""``trainer.global_step`` at an analysis where ``alerts/active`` is 0, -1 where it is not: for
``ModelCheckpoint(monitor="alerts/healthy_step", mode="max", save_top_k=1)``."""
ACTIVE_SEVERITIES = COUNTED_SEVERITIES

MODEL_LEVEL_PREFIXES = ("spectral_summary/",)
"""Tags that always go into ``trainer.callback_metrics`` (with the ``alerts/`` values)."""
ALERT_TAGS = (tags.ALERT_COUNT_TAG, ALERT_ACTIVE_TAG, ALERT_RAISED_TAG, HEALTHY_STEP_TAG)

Scalars = tuple[dict[str, float], dict[str, str]]


def is_model_level(tag: str) -> bool:
    """A model-level value (an aggregate or an alert count), as opposed to a per-layer one."""
    return tag.startswith(MODEL_LEVEL_PREFIXES) or tag in ALERT_TAGS


def active_alerts(result: AnalysisResult) -> int:
    """``alerts/active = #{rules with a condition of severity warning or stop in force}``: one
    per cause, however many layers it holds in (for a rule with hysteresis, a (layer, mode) key
    that fired and has not cleared; for one without, an alert it raised at this analysis;
    :meth:`svd_callback.alerts.AlertEngine.active`, the union over the ranks). A condition that
    holds for 3 analyses and then clears reads 1, 1, 1, 0 where ``alerts/raised`` reads 1, 0,
    0, 0."""
    return len({condition.rule for condition in result.active})


def raised_alerts(result: AnalysisResult) -> int:
    """``alerts/raised = #{a in alerts of this analysis : a.severity in (warning, stop)}``."""
    return sum(alert.severity in ACTIVE_SEVERITIES for alert in result.alerts)


def healthy_step(result: AnalysisResult) -> int:
    """``alerts/healthy_step = step if alerts/active == 0 else -1``. Steps only grow, so the
    largest value is the latest analysis with no condition in force; ``ModelCheckpoint``'s
    strict comparison (``torch.gt`` for ``mode="max"``) replaces its best only then."""
    return result.step if active_alerts(result) == 0 else -1


def scalars(result: AnalysisResult, config: AnalysisConfig, class_conventions: str) -> Scalars:
    """Finite values by tag and their descriptions: ``spectral/<metric>[.<mode>]/<layer>`` of
    the selected metrics, ``spectral_summary/<key>[.<mode>]`` of the selected metrics' aggregates
    (and the counts), ``alerts/count``, ``alerts/active``, ``alerts/raised``,
    ``alerts/healthy_step`` and ``classes/<stat>/<layer>``."""
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
            ) + (f"; matrix: {record.notes['matrix']}" if "matrix" in record.notes else "")
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
        "level: number of alert rules with a condition of severity warning or stop in force "
        "after this analysis (fired and not cleared, any layer, any rank; 0 while training is "
        "healthy)"
    )
    values[ALERT_RAISED_TAG] = float(raised_alerts(result))
    descriptions[ALERT_RAISED_TAG] = (
        "event: number of alerts of severity warning or stop raised by this analysis (each "
        "rule fires once its condition held for its patience, again only after it cleared)"
    )
    values[HEALTHY_STEP_TAG] = float(healthy_step(result))
    descriptions[HEALTHY_STEP_TAG] = (
        "trainer.global_step of this analysis if no alert condition is in force "
        "(alerts/active == 0), else -1"
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
