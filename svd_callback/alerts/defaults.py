"""The rules ``SpectralMonitor`` runs when it is given none, one choice for the callback and
for a replay of its history file (:func:`svd_callback.sinks.history_rows.recorded_rules`):
:func:`default_rules`, with :class:`TrapsAppeared` only where the ``"traps"`` metric group is
computed (elsewhere it could never fire), and with the class analysis on,
:func:`default_class_rules`."""

from __future__ import annotations

from collections.abc import Collection

from svd_callback.alerts.base import Rule
from svd_callback.alerts.class_rules import default_class_rules
from svd_callback.alerts.engine import default_rules

__all__ = ["monitor_default_rules"]


def monitor_default_rules(
    metric_groups: Collection[str], class_analysis: bool = False
) -> list[Rule]:
    """The default rules of a monitor computing ``metric_groups`` (with the class analysis on
    or off)."""
    rules = default_rules(traps="traps" in metric_groups)
    if class_analysis:
        rules += default_class_rules()
    return rules
