"""The rows of the history file, written and read back: the one owner of its format
(docs/conventions.md#history-file; :mod:`svd_callback.sinks.history` reads and writes the file).

Writing: :func:`run_row` (the run's settings at each start), and per analysis
:func:`layer_row` (:meth:`LayerReport.to_json <svd_callback.report.LayerReport.to_json>` with
the analysis's context), :func:`summary_row`, :func:`training_row`, :func:`alert_row`
(:meth:`Alert.to_dict <svd_callback.alerts.Alert.to_dict>` with its context) and the ``class``
rows of :meth:`ClassReport.rows <svd_callback.classes.report.ClassReport.rows>`.

Reading: :func:`read_analyses` groups the rows of one run into one :class:`RecordedAnalysis`
per analysis (:meth:`~svd_callback.report.LayerReport.from_json`,
:meth:`~svd_callback.classes.report.ClassReport.metrics_from_rows`); :func:`replay_alerts` runs
an :class:`~svd_callback.alerts.AlertEngine` over them as the callback did, with the rules the
callback would have chosen
(:func:`recorded_rules`) or any others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from svd_callback.alerts import Alert, AlertEngine, Rule, monitor_default_rules
from svd_callback.classes.report import ClassReport
from svd_callback.config import AnalysisConfig
from svd_callback.metric_groups import METRIC_GROUPS
from svd_callback.report import LayerReport, Report
from svd_callback.sinks import tags

__all__ = [
    "RecordedAnalysis",
    "alert_row",
    "layer_row",
    "read_analyses",
    "recorded_rules",
    "replay_alerts",
    "run_row",
    "summary_row",
    "training_row",
]

ANALYSIS_ROWS = ("layer", "summary", "training", "alert", "class", "class_summary")
"""The row types that belong to one analysis (the ``run`` rows describe the run)."""


def run_row(
    event: str, step: int, epoch: int, run_id: str | None, config: AnalysisConfig,
    world_size: int, time: float,
) -> dict[str, Any]:
    """The ``run`` row written at each start (``event``: ``start`` or ``resume``): the run's
    id, the wall ``time`` and how its numbers are made."""
    return {
        "type": "run",
        "event": event,
        "step": int(step),
        "epoch": int(epoch),
        "run_id": run_id,
        "time": time,
        "mode": config.primary_mode,
        "modes": list(config.conv_mode),
        "normalization": config.normalization,
        "fit": config.fit,
        "ww_compat": config.ww_compat,
        "metric_groups": list(config.metrics),
        "conventions": {m: tags.conventions(m, config.normalization, config.fit,
                                            config.ww_compat) for m in config.conv_mode},
        "world_size": int(world_size),
    }


def _conventions(config: AnalysisConfig) -> dict[str, Any]:
    return {"normalization": config.normalization, "fit": config.fit,
            "ww_compat": config.ww_compat}


def summary_row(
    mode: str, aggregates: Mapping[str, float], context: Mapping[str, Any],
    config: AnalysisConfig, seconds: float,
) -> dict[str, Any]:
    """The ``summary`` row of one mode's aggregates (and the analysis's wall time)."""
    return {"type": "summary", **context, "mode": mode, **_conventions(config),
            "metrics": dict(aggregates), "seconds": seconds}


def training_row(training: Mapping[str, float], context: Mapping[str, Any]) -> dict[str, Any]:
    """The ``training`` row: the trainer's own scalars the rules saw."""
    return {"type": "training", **context, "metrics": dict(training)}


def alert_row(
    alert: Alert, ranks: Sequence[int], context: Mapping[str, Any], config: AnalysisConfig
) -> dict[str, Any]:
    """The ``alert`` row of one alert and the ranks that raised it."""
    return {**alert.to_dict(), "type": "alert", **context, "mode": alert.mode,
            **_conventions(config), "ranks": list(ranks)}


def layer_row(
    record: LayerReport, context: Mapping[str, Any], *, fit: str | None, ww_compat: bool,
    rank: int,
) -> dict[str, Any]:
    """The history file's ``layer`` row of ``record``: ``type``, the analysis's ``context``
    (epoch, epochs trained, step, trigger, run id), the record (:meth:`LayerReport.to_json`)
    with the run's ``fit`` and ``ww_compat`` after its normalisation, and the ``rank`` that
    analysed it."""
    data = record.to_json()
    head = {k: data.pop(k) for k in ("layer", "kind", "mode", "normalization")}
    return {"type": "layer", **context, **head, "fit": fit, "ww_compat": ww_compat, **data,
            "rank": int(rank)}


@dataclass
class RecordedAnalysis:
    """One analysis of a history file.

    Attributes:
        epoch, step: the analysis's epoch and ``trainer.global_step``.
        report: its layer records (:meth:`LayerReport.from_json`; no spectra).
        summary: the aggregates per mode.
        training: the trainer's own scalars the rules saw.
        class_metrics: the class statistics per layer, as the class rules see them.
        alerts: the alerts the callback raised.
    """

    epoch: int
    step: int
    report: Report = field(default_factory=Report)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    training: dict[str, float] = field(default_factory=dict)
    class_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)


def read_analyses(rows: Iterable[Mapping[str, Any]]) -> list[RecordedAnalysis]:
    """The analyses of the rows of one run (:func:`~svd_callback.sinks.history.read_history`),
    ordered by (epoch, step); ``run`` rows and rows of other types are passed over.

    Raises:
        ValueError: the rows carry several ``run_id`` (runs that appended to one file): their
            analyses would mix; pass one run's rows.
    """
    analyses: dict[tuple[int, int], RecordedAnalysis] = {}
    class_rows: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    run_ids: set[str] = set()
    for row in rows:
        if row.get("run_id") is not None:
            run_ids.add(row["run_id"])
            if len(run_ids) > 1:
                raise ValueError(f"the rows come from several runs (run_id {sorted(run_ids)}); "
                                 "pass the rows of one run")
        kind = row.get("type")
        if kind not in ANALYSIS_ROWS:
            continue
        key = (int(row["epoch"]), int(row["step"]))
        entry = analyses.setdefault(key, RecordedAnalysis(*key))
        if kind == "layer":
            entry.report.append(LayerReport.from_json(row))
        elif kind == "summary":
            entry.summary[row["mode"]] = _floats(row["metrics"])
        elif kind == "training":
            entry.training = _floats(row["metrics"])
        elif kind == "alert":
            values = [math.nan if v is None else v for v in row.get("values") or ()]
            entry.alerts.append(Alert.from_dict({**row, "values": values}))
        else:
            class_rows.setdefault(key, []).append(row)
    for key, recorded in class_rows.items():
        analyses[key].class_metrics = ClassReport.metrics_from_rows(recorded)
    return [analyses[k] for k in sorted(analyses)]


def recorded_rules(rows: Iterable[Mapping[str, Any]]) -> list[Rule]:
    """The rules the callback runs by default (:func:`svd_callback.alerts.monitor_default_rules`)
    for the run of ``rows``: its metric groups from its ``run`` row (from the metrics of its
    ``layer`` rows for a file without one), the class rules when it has ``class`` rows."""
    rows = list(rows)
    run = next((r for r in rows if r.get("type") == "run" and r.get("metric_groups")), None)
    if run is not None:
        groups = set(run["metric_groups"])
    else:
        seen = {m for r in rows if r.get("type") == "layer" for m in r.get("metrics") or {}}
        groups = {g for g, metrics in METRIC_GROUPS.items() if seen & set(metrics)}
    return monitor_default_rules(groups, any(r.get("type") == "class" for r in rows))


def replay_alerts(
    analyses: Sequence[RecordedAnalysis],
    rules: Sequence[Rule | Any],
    levels: list[tuple[int, int]] | None = None,
) -> list[Alert]:
    """Run a fresh :class:`AlertEngine` with ``rules`` over ``analyses`` as the callback did,
    analysis by analysis, and return every alert raised; with a ``levels`` list, append
    (epoch, number of conditions in force, ``alerts/active``) after each analysis."""
    engine = AlertEngine(rules)
    alerts: list[Alert] = []
    for entry in analyses:
        alerts += engine.update(entry.epoch, entry.step, entry.report, entry.summary,
                                training=entry.training, classes=entry.class_metrics)
        if levels is not None:
            levels.append((entry.epoch, len(engine.active())))
    return alerts


def _floats(values: Mapping[str, Any]) -> dict[str, float]:
    """``null`` as NaN."""
    return {str(k): math.nan if v is None else float(v) for k, v in values.items()}
