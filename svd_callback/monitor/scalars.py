"""Every scalar the callback logs, built in one place: typed
:class:`~svd_callback.sinks.tags.Scalar` records (tag, value, description, chart, level) from one
:class:`~svd_callback.monitor.result.AnalysisResult`.

The readers work on the records' fields, never on tag strings: ``trainer.callback_metrics``
takes the model-level ones (:attr:`Scalar.model_level`), the loggers the ``logged`` ones, the
custom-scalar layout their charts (:func:`layout_charts`), the HPARAMS tab
:func:`hparam_metrics`. Families (tag patterns: ``docs/conventions.md``):

- per layer, ``spectral/<metric>[.<mode>]/<layer>``: every metric of the selected groups;
- model level, ``all_layers/<key>[.<mode>]``: the aggregates
  (:mod:`svd_callback.aggregates`) of the selected metrics and the counts;
- model level, :data:`MODEL_SCALARS` (``alerts/active``; ``alerts/count``, ``alerts/raised``
  and ``alerts/healthy_step`` for ``callback_metrics`` only) and the cumulative counts
  ``alerts/total`` and ``alerts/rule/<rule>`` (logged from the rule's first alert on);
- per layer, ``classes/<stat>/<layer>``: the class statistics (per-class values are left out).

Fewer, non-redundant charts reach the loggers (``logged``): a layer without a conv mode (every
kind but a convolution) has the same matrix, hence the same values, in every mode and is logged
under the primary mode only, as are the weight's own metrics (:data:`MODE_FREE_METRICS`, the
``"motion"`` group) of every layer; of the aggregates only the statistics of
``MonitorConfig.summary_stats``; :data:`CONSTANT_METRICS` (a flat chart each) only with
``MonitorConfig.constant_metrics``. ``callback_metrics``, the rules and the history file see
every value.

The custom-scalar layout (what each record's ``chart`` says): ``alerts`` first (a margin
chart, which TensorBoard never smooths: ``alerts/active`` within ``alerts/total``), ``alerts by
rule`` (one chart per rule that fired), ``all layers [<mode>]`` (one margin chart per
aggregate, the key metrics first; open for the primary mode), then one closed section
``<metric> [<mode>]`` per per-layer metric with one chart per :data:`LAYERS_PER_CHART` layers,
and ``classes`` (closed).

Adding a model-level scalar: one :class:`ModelScalar` in :data:`MODEL_SCALARS` (tag, value,
description and chart together) and its test; ``callback_metrics``, the loggers and the layout
take it from there. Adding an aggregate over layers: its metric in
:data:`svd_callback.aggregates.SUMMARY_METRICS`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from svd_callback.aggregates import aggregate
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
    "hparam_metrics",
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

ALERTS_SECTION = Section("alerts", (0,))
RULES_SECTION = Section("alerts by rule", (0, 1))
"""The rules that fired, one chart each: a section of its own, so that ``alerts/active`` stays
the first chart whichever run's charts TensorBoard merges first."""
CLASSES_SECTION = Section("classes", (3,), closed=True)
LAYERS_PER_CHART = 5
"""Layers on one per-layer chart: TensorBoard marks the tags of a chart with five symbols
(square, diamond, triangle, star, cross) and colours the runs, so five layers are told apart."""
KEY_METRICS = ("alpha", "stable_rank", "spectral_norm")
"""The metrics whose charts come first in a section (docs/guide.md reads these first)."""


def summary_section(mode: str, modes: Sequence[str]) -> Section:
    """``all layers [<mode>]``, after the alerts in the order of ``conv_mode``; open for the
    primary mode only."""
    index = list(modes).index(mode) if mode in modes else len(modes)
    return Section(f"all layers [{mode}]", (1, index), closed=index > 0)


def layer_section(metric: str, mode: str, config: MonitorConfig) -> Section:
    """``<metric> [<mode>]``: one closed section per per-layer metric and mode (mode, then the
    metric's place in the selected groups)."""
    analysis = config.analysis
    return _layer_section(metric, mode, tuple(analysis.conv_mode), analysis.metric_names)


@functools.lru_cache(maxsize=4096)  # the same sections at every analysis: one object each
def _layer_section(metric: str, mode: str, modes: tuple[str, ...],
                   names: tuple[str, ...]) -> Section:
    return Section(f"{metric} [{mode}]",
                   (2, modes.index(mode) if mode in modes else len(modes),
                    *_metric_rank(metric, names)), closed=True)


def _metric_rank(metric: str, names: Sequence[str]) -> tuple[int, int, str]:
    key = KEY_METRICS.index(metric) if metric in KEY_METRICS else len(KEY_METRICS)
    return key, names.index(metric) if metric in names else len(names), metric


def _alert_chart(title: str, tags: tuple[str, str, str], rank: tuple,
                 section: Section = ALERTS_SECTION) -> Chart:
    return Chart(section, title, rank=rank, margin=tags)


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
        logged: whether it reaches the loggers (False: ``callback_metrics`` only).
    """

    name: str
    description: str
    value: Callable[[AnalysisResult], float]
    chart: Chart | None = None
    float64: bool = False
    family: Family = Family.ALERTS
    logged: bool = True

    def scalar(self, result: AnalysisResult) -> Scalar:
        return Scalar(self.family, self.name, float(self.value(result)), self.description,
                      chart=self.chart, model_level=True, float64=self.float64,
                      logged=self.logged)

    @property
    def tag(self) -> str:
        return Scalar(self.family, self.name, 0.0, "").tag


ACTIVE_TAG = tags.alert_tag("active")
ACTIVE_CHART = _alert_chart(
    "alerts/active: rules in force now (line); alerts/total: raised so far (top of the band)",
    (ACTIVE_TAG, ACTIVE_TAG, tags.ALERT_TOTAL_TAG), (0,))
"""The first chart of the layout: a margin chart, never smoothed; the band up to
``alerts/total`` (never below the level) also keeps the level's peak inside TensorBoard's
outlier-trimmed scale."""
COUNT = ModelScalar(
    "count", "number of spectral alerts raised by this analysis, info ones included (kept in "
    "trainer.callback_metrics for older setups; not logged: alerts/total counts them)",
    lambda r: len(r.alerts), logged=False)
ACTIVE = ModelScalar(
    "active",
    "level: number of alert rules with a condition of severity warning or stop in force "
    "after this analysis (fired and not cleared, any layer, any rank; 0 while training is "
    "healthy; which ones: the alerts text)",
    active_alerts, ACTIVE_CHART)
RAISED = ModelScalar(
    "raised",
    "event: number of alerts of severity warning or stop raised by this analysis (each rule "
    "fires once its condition held for its patience, again only after it cleared)",
    raised_alerts, logged=False)
HEALTHY_STEP = ModelScalar(
    "healthy_step",
    "trainer.global_step of this analysis if no alert condition is in force "
    "(alerts/active == 0), else -1",
    healthy_step, float64=True, logged=False)  # float32 rounds steps above 2**24

MODEL_SCALARS: tuple[ModelScalar, ...] = (COUNT, ACTIVE, RAISED, HEALTHY_STEP)
"""The model-level scalars computed from each analysis, in logging order (the aggregates over
layers are :mod:`svd_callback.aggregates`'; the cumulative alert counts :func:`total_scalars`).
``alerts/count``, ``alerts/raised`` and ``alerts/healthy_step`` go to ``callback_metrics``
only: an event count drawn as a chart is what TensorBoard's smoothing and outlier trimming
bend most, and ``alerts/total`` and the alerts text say the same."""

ALERT_CHARTS = (ACTIVE_CHART,)
"""The charts of the ``alerts`` section shown from the first layout on."""
TOTAL_DESCRIPTION = ("cumulative number of spectral alerts raised in this run up to this "
                     "analysis, info ones included")


def rule_chart(rule: str) -> Chart:
    """``<rule>: alerts raised so far``: a margin chart (never smoothed) of
    ``alerts/rule/<rule>``, one per rule that fired, in section ``alerts by rule``."""
    tag = tags.alert_rule_tag(rule)
    return _alert_chart(f"{rule}: alerts raised so far", (tag, tag, tag), (rule,),
                        RULES_SECTION)


def total_scalars(totals: Mapping[str, int]) -> list[Scalar]:
    """``alerts/total`` and ``alerts/rule/<rule>``: alerts raised so far in this run, in all
    and per rule of ``totals`` (:attr:`AnalysisResult.alert_totals`: every configured rule, 0
    until it fires). Every rule's count goes to ``callback_metrics``; the loggers get a rule's
    series from its first alert on, so that TensorBoard shows one chart per rule that fired
    instead of a flat 0 for every rule configured."""
    out = [Scalar(Family.ALERTS, "total", float(sum(totals.values())), TOTAL_DESCRIPTION,
                  chart=ACTIVE_CHART, model_level=True)]
    for name, count in totals.items():
        out.append(Scalar(Family.ALERTS, tags.alert_rule_name(name), float(count),
                          f"cumulative number of alerts rule {name} raised in this run up to "
                          f"this analysis (logged from its first alert on)",
                          chart=rule_chart(name), model_level=True, logged=count > 0))
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
    """``spectral/<metric>[.<mode>]/<layer>`` of every analysed record and selected metric; a
    logged one on the chart of its metric, mode and group of :data:`LAYERS_PER_CHART` layers
    (:func:`layer_chart`)."""
    analysis = config.analysis
    primary = analysis.primary_mode
    hidden = _hidden_constants(config)
    groups = _layer_groups(result, primary)
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
            logged = not (repeated or metric in hidden
                          or (secondary and metric in MODE_FREE_METRICS))
            out.append(Scalar(
                Family.LAYER, metric, float(value),
                tags.metric_description(metric, record.mode, record.normalization,
                                        analysis.fit, analysis.ww_compat)
                + (f"; matrix: {record.notes['matrix']}" if "matrix" in record.notes else ""),
                chart=layer_chart(metric, record.mode, config, *groups[record.mode, record.name])
                if logged else None,
                layer=record.name, mode=record.mode, primary=record.mode == primary,
                metric=metric, logged=logged,
            ))
    return out


def _layer_groups(result: AnalysisResult, primary: str) -> dict[tuple[str, str], tuple]:
    """(mode, layer) -> (the layers of its chart, the chart's number): each mode's logged layers
    in the report's (model) order, :data:`LAYERS_PER_CHART` a chart."""
    names: dict[str, list[str]] = {}
    for record in result.report:
        if record.skipped or (record.mode != primary and mode_independent(record.kind)):
            continue
        names.setdefault(record.mode, [])
        if record.name not in names[record.mode]:
            names[record.mode].append(record.name)
    out = {}
    for mode, layers in names.items():
        for start in range(0, len(layers), LAYERS_PER_CHART):
            group = tuple(layers[start:start + LAYERS_PER_CHART])
            for layer in group:
                out[mode, layer] = (group, start // LAYERS_PER_CHART)
    return out


def summary_scalars(result: AnalysisResult, config: MonitorConfig) -> list[Scalar]:
    """``all_layers/<key>[.<mode>]``: the finite aggregates of the selected metrics and the
    counts."""
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
                chart=summary_chart(key, mode, config) if logged else None, mode=mode,
                primary=mode == primary, metric=metric,
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
def layer_chart(metric: str, mode: str, config: MonitorConfig, layers: Sequence[str] = (),
                number: int = 0) -> Chart:
    """The chart of ``metric`` in ``mode`` for ``layers`` (at most :data:`LAYERS_PER_CHART`,
    the ``number``-th group of the mode's layers), in the closed section ``<metric> [<mode>]``:
    ``^spectral/<metric>[.<mode>]/(<layer>|...)$``, titled with its layers."""
    analysis = config.analysis
    return _layer_chart(metric, mode, analysis.primary_mode, tuple(layers), number,
                        layer_section(metric, mode, config))


@functools.lru_cache(maxsize=16384)  # the same charts at every analysis: one object each
def _layer_chart(metric: str, mode: str, primary: str, layers: tuple[str, ...], number: int,
                 section: Section) -> Chart:
    head = "^" + re.escape(f"{Family.LAYER.value}/{tags.metric_name(metric, mode, primary)}/")
    names = [tags.clean_layer_name(layer) for layer in layers]
    pattern = head + "(" + "|".join(map(re.escape, names)) + ")$" if names else head + ".*"
    title = f"{metric} [{mode}]" + (f": {', '.join(layers)}" if layers else "")
    return Chart(section, title, pattern, (number,))


def summary_chart(key: str, mode: str, config: MonitorConfig) -> Chart:
    """The aggregate ``key`` of ``mode`` in section ``all layers [<mode>]``: a margin chart of
    the one tag (never smoothed), the key metrics' first."""
    analysis = config.analysis
    tag = tags.summary_tag(key, mode, analysis.primary_mode)
    found = aggregate(key)
    metric = found.metric if found is not None and found.metric else key
    rank = (*_metric_rank(metric, analysis.metric_names), key)
    return Chart(summary_section(mode, analysis.conv_mode), key, rank=rank,
                 margin=(tag, tag, tag))


@functools.lru_cache(maxsize=4096)
def class_chart(stat: str) -> Chart:
    """One chart per class statistic over every layer, in the order of
    :data:`~svd_callback.sinks.tags.CLASS_STAT_DESCRIPTIONS`."""
    known = list(tags.CLASS_STAT_DESCRIPTIONS)
    rank = known.index(stat) if stat in known else len(known)
    return Chart(CLASSES_SECTION, stat, rf"^classes/{re.escape(stat)}/.*", (rank, stat))


def layout_charts(scalars: Iterable[Scalar], config: MonitorConfig) -> set[Chart]:
    """The charts that show ``scalars``: each one's own."""
    return {scalar.chart for scalar in scalars if scalar.chart is not None}


def layout_sections(config: MonitorConfig) -> tuple[Section, ...]:
    """The sections shown even when empty: ``alerts``."""
    return (ALERTS_SECTION,)


# ---------------------------------------------------------------------- HPARAMS
TRAINER_METRIC_DESCRIPTION = "logged by the model (its last value)"


def hparam_metrics(
    scalars: Iterable[Scalar], config: MonitorConfig, trainer_metrics: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """The metrics of the HPARAMS table as (tag, description), those TensorBoard shows first
    (five) first: ``alerts/active``, the model's own validation metrics among
    ``trainer_metrics`` (the names the trainer logged, ``trainer.logged_metrics``), its other
    metrics, ``alerts/total``, then the primary mode's aggregates logged in ``scalars`` (key
    metrics first). Only tags that exist: ``epoch`` and the monitor's own tags are no model
    metrics (Lightning's placeholder ``hp_metric`` is no logged metric of the trainer; a model
    that logs its own is kept)."""
    own = {tags.EPOCH_TAG}
    model = [m for m in dict.fromkeys(map(str, trainer_metrics))
             if m not in own and not m.startswith(tags.OWN_TAG_PREFIXES)]
    model.sort(key=lambda m: (not m.startswith("val"), m))
    out = [(ACTIVE.tag, ACTIVE.description)]
    out += [(m, TRAINER_METRIC_DESCRIPTION) for m in model]
    out.append((tags.ALERT_TOTAL_TAG, TOTAL_DESCRIPTION))
    primary = [s for s in scalars if s.family is Family.SUMMARY and s.logged and s.primary]
    primary.sort(key=lambda s: (*_metric_rank(s.metric or s.name,
                                              config.analysis.metric_names), s.name))
    out += [(s.tag, s.description) for s in dict.fromkeys(primary)]
    return list(dict(out).items())
