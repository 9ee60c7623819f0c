"""The conditions in force after an analysis: the state behind ``alerts/active``.

A rule fires once per episode (:class:`~svd_callback.alerts.base.Hysteresis`), so the alerts of
one analysis are events. The level is read from the rules' own state instead: every key of every
:class:`Hysteresis` a rule names (:meth:`~svd_callback.alerts.base.Rule.hysteresis_states`) that
fired and has not cleared, and for a rule that keeps no hysteresis, the alerts it raised at the
latest analysis. Rules with ``action="info"`` never count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from svd_callback.alerts.base import COUNTED_SEVERITIES, Alert, Hysteresis, Rule

__all__ = [
    "ALERT_SOURCE",
    "Condition",
    "alert_condition",
    "alerts_in_force",
    "hysteresis_of",
    "rule_conditions",
]

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


def alerts_in_force(conditions: Iterable[Condition], alerts: Sequence[Alert]) -> list[Alert]:
    """The alerts behind ``conditions`` (the conditions in force), oldest first, one per alert:
    for each condition the latest of ``alerts`` (oldest first) of its rule that stands for it,
    its ``layers`` (and ``values``, one per layer) narrowed to the layers still in force.

    An alert stands for a condition keyed ``(layer, mode)``, ``(layer,)`` or ``(layer, label)``
    when it names the layer (and, if it has a mode, the key holds that mode); for a key without a
    layer (``()``, ``(mode,)``) the rule's latest alert of that mode does; an
    :data:`ALERT_SOURCE` condition is its own alert (same layer, mode, metric and message). A
    condition whose alert is no longer kept gets a generic one (rule and key, no epoch)."""
    chosen: dict[int, tuple[Alert, list[str]]] = {}
    for condition in conditions:
        alert = _alert_for(condition, alerts)
        if alert is None:
            where = [k for k in condition.key if isinstance(k, str)]
            alert = Alert(rule=condition.rule, layers=tuple(where[:1]),
                          message=f"{condition.rule}: in force for {', '.join(where) or 'model'}")
        entry = chosen.setdefault(id(alert), (alert, []))
        entry[1].extend(layer for layer in condition.key if layer in alert.layers
                        and layer not in entry[1])
    out = []
    for alert, layers in chosen.values():
        if alert.layers and layers and len(layers) < len(alert.layers):
            kept = [alert.layers.index(layer) for layer in alert.layers if layer in layers]
            values = (tuple(alert.values[i] for i in kept)
                      if len(alert.values) == len(alert.layers) else alert.values)
            alert = replace(alert, layers=tuple(alert.layers[i] for i in kept),
                            layer=alert.layers[kept[0]] if len(kept) == 1 else None,
                            values=values)
        out.append(alert)
    return sorted(out, key=lambda a: (a.epoch is None, a.epoch or 0, a.step or 0, a.rule))


def _alert_for(condition: Condition, alerts: Sequence[Alert]) -> Alert | None:
    """The latest alert of ``alerts`` that stands for ``condition`` (see
    :func:`alerts_in_force`)."""
    mine = [a for a in reversed(alerts) if a.rule == condition.rule]
    key = condition.key
    if condition.source == ALERT_SOURCE:
        return next((a for a in mine if alert_condition(a) == condition), None)
    for alert in mine:
        if any(isinstance(k, str) and k in alert.layers for k in key):
            if alert.mode is None or alert.mode in key or len(key) == 1:
                return alert
            continue
        if not any(isinstance(k, str) for k in key) or (
                len(key) == 1 and key[0] == alert.mode):
            return alert
    return None

