"""How ``SpectralMonitor`` meets the alert engine, one choice for the callback and for a replay
of its history file (:func:`svd_callback.sinks.history_rows.replay_alerts`):

- :func:`monitor_default_rules`: the rules it runs when given none: :func:`default_rules`, with
  :class:`TrapsAppeared` only where the ``"traps"`` metric group is computed (elsewhere it could
  never fire), and with the class analysis on, :func:`default_class_rules`;
- :func:`feed`: one analysis given to :meth:`AlertEngine.update`: the layer records with the
  class statistics as records of mode ``"classes"``, the aggregates per mode with the trainer's
  own scalars under the mode ``"training"``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from svd_callback.alerts.base import Alert, Rule
from svd_callback.alerts.class_rules import default_class_rules
from svd_callback.alerts.engine import AlertEngine, default_rules
from svd_callback.alerts.model_rules import TRAINING
from svd_callback.classes.records import class_records

__all__ = ["feed", "monitor_default_rules"]


def monitor_default_rules(
    metric_groups: Collection[str], class_analysis: bool = False
) -> list[Rule]:
    """The default rules of a monitor computing ``metric_groups`` (with the class analysis on
    or off)."""
    rules = default_rules(traps="traps" in metric_groups)
    if class_analysis:
        rules += default_class_rules()
    return rules


def feed(
    engine: AlertEngine,
    epoch: int,
    step: int,
    report: Iterable[Any],
    summary: Mapping[str, Mapping[str, float]],
    training: Mapping[str, float] | None = None,
    class_metrics: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Alert]:
    """Run ``engine`` on one analysis (``report``: its layer records; ``summary``: the
    aggregates per mode; ``training``: the trainer's scalars; ``class_metrics``: the class
    statistics per layer) as the callback does; returns the alerts raised."""
    records = [*report, *class_records(class_metrics or {})]
    return engine.update(epoch, step, records,
                         {**summary, TRAINING: dict(training)} if training else summary)
