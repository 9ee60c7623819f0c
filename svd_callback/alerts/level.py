"""The conditions in force after an analysis: the state behind ``alerts/active``.

A rule fires once per episode (:class:`~svd_callback.alerts.base.Hysteresis`), so the alerts of
one analysis are events. The level is read from the rules' own state instead: every key of every
:class:`Hysteresis` a rule names (:meth:`~svd_callback.alerts.base.Rule.hysteresis_states`) that
fired and has not cleared, and for a rule that keeps no hysteresis, the alerts it raised at the
latest analysis. Rules with ``action="info"`` never count.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from svd_callback.alerts.base import COUNTED_SEVERITIES, Alert, Hysteresis, Rule

__all__ = ["ALERT_SOURCE", "Condition", "alert_condition", "hysteresis_of", "rule_conditions"]

ALERT_SOURCE = "alert"
"""``Condition.source`` of a condition known only from an alert of the latest analysis."""


class Condition(NamedTuple):
    """One condition in force.

    Attributes:
        rule: the rule's name.
        source: the name of the rule's :class:`Hysteresis` attribute that holds it, or
            :data:`ALERT_SOURCE`.
        key: the hysteresis key (e.g. ``(layer, mode)``), or ``(layer, mode, metric, message)``
            of the alert.
    """

    rule: str
    source: str
    key: tuple


def hysteresis_of(rule: Any) -> list[tuple[str, Hysteresis]]:
    """The :class:`Hysteresis` states of ``rule`` by name, sorted by name
    (:meth:`Rule.hysteresis_states`; an object with ``check`` that is no :class:`Rule` is read
    as a :class:`Rule` would read itself)."""
    states = rule.hysteresis_states() if isinstance(rule, Rule) else (
        Rule.hysteresis_states(rule) if hasattr(rule, "__dict__") else {})
    return sorted(states.items())


def alert_condition(alert: Alert) -> Condition:
    """The condition an alert stands for when no hysteresis state says more."""
    return Condition(alert.rule, ALERT_SOURCE, (alert.layer, alert.mode, alert.metric,
                                                alert.message))


def rule_conditions(rule: Any, name: str, alerts: Iterable[Alert]) -> list[Condition]:
    """The conditions of ``rule`` in force: its hysteresis keys that fired and have not cleared,
    or, without hysteresis, its ``alerts`` of severity warning or stop; none for an ``"info"``
    rule."""
    if getattr(rule, "action", "log") == "info":
        return []
    states = hysteresis_of(rule)
    if states:
        return [Condition(name, source, tuple(key)) for source, h in states for key in h.holding()]
    counted = (alert_condition(a) for a in alerts if a.severity in COUNTED_SEVERITIES)
    return list(dict.fromkeys(counted))
