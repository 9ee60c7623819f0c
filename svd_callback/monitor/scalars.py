"""Every scalar the callback logs, built in one place: typed
:class:`~svd_callback.sinks.tags.Scalar` records (tag, value, description, chart, level) from one
:class:`~svd_callback.monitor.result.AnalysisResult`.

The readers work on the records' fields, never on tag strings: ``trainer.callback_metrics``
takes the model-level ones (:attr:`Scalar.model_level`), the loggers the ``logged`` ones, the
custom-scalar layout their charts (:func:`layout_charts`), the HPARAMS tab
:func:`hparam_tags`. Families (tag patterns: ``docs/conventions.md``):

- per layer, ``spectral/<metric>[.<mode>]/<layer>``: every metric of the selected groups;
- model level, ``spectral_summary/<key>[.<mode>]``: the aggregates
  (:mod:`svd_callback.aggregates`) of the selected metrics and the counts;
- model level, :data:`MODEL_SCALARS` (``alerts/count``, ``alerts/active``, ``alerts/raised``,
  ``alerts/healthy_step``) and the cumulative counts ``alerts/total`` and
  ``alerts/rule/<rule>``;
- per layer, ``classes/<stat>/<layer>``: the class statistics (per-class values are left out).

Fewer, non-redundant charts reach the loggers (``logged``): a layer without a conv mode (every
kind but a convolution) has the same matrix, hence the same values, in every mode and is logged
under the primary mode only, as are the weight's own metrics (:data:`MODE_FREE_METRICS`, the
``"motion"`` group) of every layer; of the aggregates only the statistics of
``MonitorConfig.summary_stats``; :data:`CONSTANT_METRICS` (a flat chart each) only with
``MonitorConfig.constant_metrics``. ``callback_metrics``, the rules and the history file see
every value.

Adding a model-level scalar: one :class:`ModelScalar` in :data:`MODEL_SCALARS` (tag, value,
description and chart together) and its test; ``callback_metrics``, the loggers and the layout
take it from there. Adding an aggregate over layers: its metric in
:data:`svd_callback.aggregates.SUMMARY_METRICS`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from svd_callback.aggregates import aggregate, statistic
from svd_callback.alerts import COUNTED_SEVERITIES
from svd_callback.config import MonitorConfig
from svd_callback.layers import is_conv_kind
from svd_callback.monitor.result import AnalysisResult
from svd_callback.motion import MOTION_METRICS
from svd_callback.sinks import tags
from svd_callback.sinks.tags import Chart, Family, Scalar, Section

__all__ = [
    "ALERT_CHARTS",
    "CONSTANT_METRICS",
    "MODEL_SCALARS",
    "ModelScalar",
    "active_alerts",
    "analysis_scalars",
    "healthy_step",
    "hparam_tags",
    "layout_charts",
    "logged_metric_names",
    "mode_independent",
    "raised_alerts",
]

CONSTANT_METRICS = ("matrix_rank", "rank_loss")
"""Metrics that are constant in ordinary training (logged on request only)."""
MODE_FREE_METRICS = frozenset(MOTION_METRICS)
"""Metrics of the weight itself, the same in every conv mode (logged and charted under the
primary mode only)."""

SUMMARY_SECTION = Section("spectral summary", (0,))
ALERTS_SECTION = Section("alerts", (1,))
CLASSES_SECTION = Section("classes", (3,))


def mode_section(mode: str, modes: Sequence[str]) -> Section:
    """``spectral (<mode>)``, after the alerts, in the order of ``conv_mode``."""
    return Section(f"spectral ({mode})", (2, list(modes).index(mode)))


def _alert_chart(title: str, pattern: str, rank: int) -> Chart:
    return Chart(ALERTS_SECTION, title, pattern, (rank,))


# ---------------------------------------------------------------------- alert levels
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
    return sum(alert.severity in COUNTED_SEVERITIES for alert in result.alerts)


def healthy_step(result: AnalysisResult) -> int:
    """``alerts/healthy_step = step if alerts/active == 0 else -1``. Steps only grow, so the
    largest value is the latest analysis with no condition in force; ``ModelCheckpoint``'s
    strict comparison (``torch.gt`` for ``mode="max"``) replaces its best only then."""
    return result.step if active_alerts(result) == 0 else -1


@dataclass(frozen=True)
class ModelScalar:
    """A model-level scalar of every analysis, ``<family>/<name>`` (e.g. ``alerts/active``):
    its tag, value, description and chart in one declaration.

    Attributes:
        name: the tag's name after the family.
        description: what it is (TensorBoard's tooltip).
        value: its value for one analysis.
        chart: its custom-scalar chart (None: none).
        float64: kept as float64 in ``callback_metrics``.
        family: the tag's family.
    """

    name: str
    description: str
    value: Callable[[AnalysisResult], float]
    chart: Chart | None = None
    float64: bool = False
    family: Family = Family.ALERTS

    def scalar(self, result: AnalysisResult) -> Scalar:
        return Scalar(self.family, self.name, float(self.value(result)), self.description,
                      chart=self.chart, model_level=True, float64=self.float64)

    @property
    def tag(self) -> str:
        return Scalar(self.family, self.name, 0.0, "").tag


COUNT = ModelScalar(
    "count", "number of spectral alerts raised by this analysis", lambda r: len(r.alerts),
    _alert_chart("alerts/count (per analysis)", r"^alerts/count$", 4))
ACTIVE = ModelScalar(
    "active",
    "level: number of alert rules with a condition of severity warning or stop in force "
    "after this analysis (fired and not cleared, any layer, any rank; 0 while training is "
    "healthy)",
    active_alerts, _alert_chart("alerts/active (conditions in force, per analysis)",
                                r"^alerts/active$", 0))
RAISED = ModelScalar(
    "raised",
    "event: number of alerts of severity warning or stop raised by this analysis (each rule "
    "fires once its condition held for its patience, again only after it cleared)",
    raised_alerts, _alert_chart("alerts/raised (warning or stop, raised per analysis)",
                                r"^alerts/raised$", 1))
HEALTHY_STEP = ModelScalar(
    "healthy_step",
    "trainer.global_step of this analysis if no alert condition is in force "
    "(alerts/active == 0), else -1",
    healthy_step, float64=True)  # float32 rounds steps above 2**24

MODEL_SCALARS: tuple[ModelScalar, ...] = (COUNT, ACTIVE, RAISED, HEALTHY_STEP)
"""The model-level scalars computed from each analysis, in logging order (the aggregates over
layers are :mod:`svd_callback.aggregates`'; the cumulative alert counts :func:`total_scalars`)."""

TOTAL_CHART = _alert_chart("alerts/total (cumulative)", r"^alerts/total$", 2)
RULE_CHART = _alert_chart("alerts/rule (cumulative, per rule)", r"^alerts/rule/.*", 3)
ALERT_CHARTS = tuple(sorted({*(s.chart for s in MODEL_SCALARS if s.chart), TOTAL_CHART,
                             RULE_CHART}, key=lambda c: c.rank))
"""The charts of the ``alerts`` section, shown from the first layout on."""
TOTAL_DESCRIPTION = ("cumulative number of spectral alerts raised in this run up to this "
                     "analysis (alerts/count: the number raised by each analysis)")


def total_scalars(totals: Mapping[str, int]) -> list[Scalar]:
    """``alerts/total`` and ``alerts/rule/<rule>``: alerts raised so far in this run, in all
    and per rule of ``totals`` (:attr:`AnalysisResult.alert_totals`: every configured rule, 0
    until it fires)."""
    out = [Scalar(Family.ALERTS, "total", float(sum(totals.values())), TOTAL_DESCRIPTION,
                  chart=TOTAL_CHART, model_level=True)]
    for name, count in totals.items():
        out.append(Scalar(Family.ALERTS, tags.alert_rule_name(name), float(count),
                          f"cumulative number of alerts rule {name} raised in this run up to "
                          f"this analysis", chart=RULE_CHART, model_level=True))
    return out


# ---------------------------------------------------------------------- selection
def logged_metric_names(config: MonitorConfig) -> tuple[str, ...]:
    """The per-layer metrics that can reach the loggers: those of the selected groups, less
    ``alpha_hill`` unless ``fit="hill"`` (the only fit that computes it) and less
    :data:`CONSTANT_METRICS` unless ``constant_metrics``."""
    analysis = config.analysis
    hidden = set(_hidden_constants(config))
    if analysis.fit != "hill":
        hidden.add("alpha_hill")
    return tuple(m for m in analysis.metric_names if m not in hidden)


def mode_independent(kind: str) -> bool:
    """A layer kind whose matrix does not depend on the conv mode (every kind but a conv)."""
    return not is_conv_kind(kind)


def _hidden_constants(config: MonitorConfig) -> tuple[str, ...]:
    return () if config.constant_metrics else CONSTANT_METRICS


# ---------------------------------------------------------------------- one analysis
def analysis_scalars(
    result: AnalysisResult, config: MonitorConfig, class_conventions: str
) -> list[Scalar]:
    """Every finite scalar of one analysis, in logging order: per-layer metrics, aggregates,
    :data:`MODEL_SCALARS`, class statistics, then the cumulative alert counts of
    :func:`total_scalars`."""
    out = [*layer_scalars(result, config), *summary_scalars(result, config)]
    out += [s.scalar(result) for s in MODEL_SCALARS]
    out += class_scalars(result.class_metrics, class_conventions)
    return out + total_scalars(result.alert_totals)


def layer_scalars(result: AnalysisResult, config: MonitorConfig) -> list[Scalar]:
    """``spectral/<metric>[.<mode>]/<layer>`` of every analysed record and selected metric."""
    analysis = config.analysis
    primary = analysis.primary_mode
    hidden = _hidden_constants(config)
    out = []
    for record in result.report:
        if record.skipped:
            continue
        secondary = record.mode != primary
        repeated = secondary and mode_independent(record.kind)
        for metric in analysis.metric_names:
            value = record.metrics.get(metric)
            if value is None or not math.isfinite(value):
                continue
            out.append(Scalar(
                Family.LAYER, metric, float(value),
                tags.metric_description(metric, record.mode, record.normalization,
                                        analysis.fit, analysis.ww_compat)
                + (f"; matrix: {record.notes['matrix']}" if "matrix" in record.notes else ""),
                chart=layer_chart(metric, record.mode, config), layer=record.name,
                mode=record.mode, primary=record.mode == primary, metric=metric,
                logged=not (repeated or metric in hidden
                            or (secondary and metric in MODE_FREE_METRICS)),
            ))
    return out


def summary_scalars(result: AnalysisResult, config: MonitorConfig) -> list[Scalar]:
    """``spectral_summary/<key>[.<mode>]``: the finite aggregates of the selected metrics and
    the counts."""
    analysis = config.analysis
    primary = analysis.primary_mode
    selected = set(analysis.metric_names)
    hidden = _hidden_constants(config)
    out = []
    for mode, aggregates in result.summary.items():
        for key, value in aggregates.items():
            found = aggregate(key)
            metric = found.metric if found is not None else None
            stat = found.stat if found is not None else None
            if (metric is not None and metric not in selected) or not math.isfinite(value):
                continue
            logged = stat is None or (stat in config.summary_stats and metric not in hidden)
            out.append(Scalar(
                Family.SUMMARY, key, float(value),
                tags.summary_description(key, mode, analysis.normalization, analysis.fit,
                                         analysis.ww_compat),
                chart=summary_chart(key), mode=mode, primary=mode == primary, metric=metric,
                stat=stat, model_level=True, logged=logged,
            ))
    return out


def class_scalars(metrics: Mapping[str, Mapping[str, float]], how: str) -> list[Scalar]:
    """``classes/<stat>/<layer>`` (finite values; the per-class ``<stat>/<c>`` values are left
    out), described with ``how`` they were made."""
    out = []
    for layer, stats in metrics.items():
        for stat, value in stats.items():
            if "/" in stat or not math.isfinite(value):
                continue
            out.append(Scalar(Family.CLASSES, stat, float(value),
                              tags.class_description(stat, how), chart=class_chart(stat),
                              layer=layer, metric=stat))
    return out


# ---------------------------------------------------------------------- charts
def layer_chart(metric: str, mode: str, config: MonitorConfig) -> Chart:
    """One chart per metric and mode over every layer (``^spectral/<metric>[.<mode>]/``)."""
    analysis = config.analysis
    names = analysis.metric_names
    rank = names.index(metric) if metric in names else len(names)
    return Chart(mode_section(mode, analysis.conv_mode), metric,
                 tags.custom_scalar_regex(metric, mode, analysis.primary_mode), (rank, metric))


def summary_chart(key: str) -> Chart:
    """One chart per aggregate overlaying the modes."""
    return Chart(SUMMARY_SECTION, key, rf"^spectral_summary/{re.escape(key)}(\.[a-z_]+)?$",
                 (key,))


def class_chart(stat: str) -> Chart:
    """One chart per class statistic over every layer, in the order of
    :data:`~svd_callback.sinks.tags.CLASS_STAT_DESCRIPTIONS`."""
    known = list(tags.CLASS_STAT_DESCRIPTIONS)
    rank = known.index(stat) if stat in known else len(known)
    return Chart(CLASSES_SECTION, stat, rf"^classes/{re.escape(stat)}/.*", (rank, stat))


def layout_charts(scalars: Iterable[Scalar], config: MonitorConfig) -> set[Chart]:
    """The charts that show ``scalars``: each one's own, and a per-layer metric's chart in
    every conv mode (each mode's section charts the same metrics; a metric of
    :data:`MODE_FREE_METRICS` in the primary mode's only)."""
    analysis = config.analysis
    charts: set[Chart] = set()
    for scalar in scalars:
        if scalar.chart is not None:
            charts.add(scalar.chart)
        if scalar.family is Family.LAYER:
            modes = ((analysis.primary_mode,) if scalar.name in MODE_FREE_METRICS
                     else analysis.conv_mode)
            charts.update(layer_chart(scalar.name, m, config) for m in modes)
    return charts


def layout_sections(config: MonitorConfig) -> tuple[Section, ...]:
    """The sections shown even when empty: ``alerts`` and one per conv mode."""
    modes = config.analysis.conv_mode
    return (ALERTS_SECTION, *(mode_section(m, modes) for m in modes))


# ---------------------------------------------------------------------- HPARAMS
def hparam_tags(config: MonitorConfig) -> list[str]:
    """The metrics of the HPARAMS table: ``spectral_summary/<metric>_<stat>`` of the primary
    conv mode for every logged metric and summary statistic, and ``alerts/total``."""
    primary = config.analysis.primary_mode
    summary = [tags.summary_tag(statistic(metric, stat).key, primary, primary)
               for metric in logged_metric_names(config) for stat in config.summary_stats]
    return [*summary, tags.ALERT_TOTAL_TAG]
