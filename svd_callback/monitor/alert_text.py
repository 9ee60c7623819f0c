"""What the ``alerts`` and ``spectral/reasons`` text tags say (the cumulative counts per rule
come with each result, :attr:`~svd_callback.monitor.result.AnalysisResult.alert_totals`).

The ``alerts`` text is written at every analysis, so that a monitored run without alerts reads
"no alerts so far" instead of having no entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from svd_callback.alerts import Alert
from svd_callback.alerts.base import fmt, rule_name, when
from svd_callback.report import Report
from svd_callback.sinks.tags import escape_markdown

__all__ = ["alerts_text", "reasons_text", "rules_markdown"]


def _action_name(action: Any) -> str:
    if callable(action):
        return getattr(action, "__name__", type(action).__name__)
    return str(action)


def rules_markdown(rules: Sequence[Any]) -> str:
    """A markdown table of the active rules: name, metric, threshold, patience, action
    (``-`` where a rule has no such setting)."""
    if not rules:
        return "no alert rules are active"
    lines = ["| rule | metric | threshold | patience | action |", "|---|---|---|---|---|"]
    for rule in rules:
        threshold = getattr(rule, "threshold", None)
        patience = getattr(rule, "patience", None)
        cells = [
            rule_name(rule),
            str(getattr(rule, "metric", None) or "-"),
            fmt(threshold) if isinstance(threshold, int | float) else "-",
            str(patience) if isinstance(patience, int) else "-",
            _action_name(getattr(rule, "action", "log")),
        ]
        lines.append("| " + " | ".join(escape_markdown(c, table=True) for c in cells) + " |")
    return "\n".join(lines)


def alerts_text(
    alerts: Sequence[Alert],
    where: Callable[[Alert], str],
    totals: Mapping[str, int],
    rules: Sequence[Any],
    epoch: int,
    step: int,
) -> str:
    """The ``alerts`` text of one analysis: the alerts it raised (or that it raised none), the
    cumulative count per rule, then the active rules."""
    total = sum(totals.values())
    head = f"**Spectral alerts** at epoch {epoch}, step {step}"
    if alerts:
        body = [f"{len(alerts)} alert(s) at this analysis:", ""]
        body += [f"- **{a.severity}** {escape_markdown(a.message + where(a), table=True)}"
                 for a in alerts]
    elif total:
        body = [f"no alert at this analysis ({total} so far)"]
    else:
        body = ["no alerts so far"]
    lines = [head, "", *body]
    if total:
        counts = ", ".join(f"{escape_markdown(name, table=True)}: {count}"
                           for name, count in sorted(totals.items()))
        lines += ["", f"alerts so far by rule: {counts}"]
    lines += ["", "**Active rules**", "", rules_markdown(rules)]
    return "\n".join(lines)


def reasons_text(report: Report, metrics: Sequence[str]) -> str:
    """One bullet per skipped layer and per logged metric without a finite value, with the
    reason recorded by the analysis (e.g. ``too few eigenvalues for a tail fit (9 < 20)``)."""
    lines = []
    for record in report:
        where = f"{record.name} [{record.mode}]"
        if record.skipped:
            lines.append(f"- {escape_markdown(where, table=True)} not analysed: "
                         f"{escape_markdown(str(record.reason), table=True)}")
            continue
        for metric in metrics:
            value = record.metrics.get(metric)
            if value is None and metric not in record.notes:
                continue  # not a metric of this layer kind
            if value is not None and math.isfinite(float(value)):
                continue
            reason = record.notes.get(metric, "no reason recorded")
            lines.append(f"- {escape_markdown(where, table=True)} "
                         f"{escape_markdown(metric, table=True)} missing: "
                         f"{escape_markdown(reason, table=True)}")
    if not lines:
        return "every logged metric has a value at every analysed layer"
    return "\n".join(["**Why metrics are missing**", "", *lines])


def md(text: str) -> str:
    """``text`` escaped for TensorBoard's markdown (emphasis, code and table characters)."""
    return escape_markdown(text, table=True)


def _where(alert: Alert) -> str:
    """``layers features.0, features.2 [unfold]``, ``layer fc [unfold]`` or ``the model``."""
    if not alert.layers:
        out = "the model"
    else:
        noun = "layer" if len(alert.layers) == 1 else f"{len(alert.layers)} layers"
        out = f"{noun} {', '.join(alert.layers)}"
    return f"{out} [{alert.mode}]" if alert.mode else out


def _since(alert: Alert) -> str:
    if alert.epoch is None:
        return "in force"
    step = "" if alert.step is None else f" (step {alert.step})"
    return f"in force since epoch {alert.epoch}{step}"


def cleared_conditions(before: Sequence[Alert], now: Sequence[Alert]) -> list[str]:
    """What cleared between two analyses, from the alerts in force at each
    (:meth:`~svd_callback.alerts.AlertEngine.in_force`): ``"AlphaBelow (a, b)"`` for layers
    no longer in force, ``"TrainingStalled"`` for a model-level condition."""
    held = {(a.rule, layer) for a in now for layer in (a.layers or (None,))}
    out: dict[str, list[str]] = {}
    for alert in before:
        for layer in alert.layers or (None,):
            if (alert.rule, layer) not in held:
                out.setdefault(alert.rule, [])
                if layer is not None and layer not in out[alert.rule]:
                    out[alert.rule].append(layer)
    return [f"{rule} ({', '.join(layers)})" if layers else rule for rule, layers in out.items()]


def state_text(
    in_force: Sequence[Alert],
    raised: Sequence[Alert],
    cleared: Sequence[str],
    totals: Mapping[str, int],
    epoch: int,
    step: int,
    *,
    rules: Sequence[Any] | None = None,
    where: Callable[[Alert], str] = lambda alert: "",
) -> str:
    """The ``alerts`` text of one analysis, the state first.

    1. ``**Healthy**`` when no condition is in force, else ``**N alert rules in force:
       <rules>**`` (N is ``alerts/active``) and one entry per alert in force
       (:meth:`~svd_callback.alerts.AlertEngine.in_force`): rule, severity, since which epoch,
       where (layers and mode), the message that made it fire (the condition with its numbers
       against their limits), what it usually means and what to try;
    2. what this analysis raised and cleared;
    3. the alerts raised so far, by rule;
    4. ``rules`` (given at the first analysis only; None: left out): the table of the rules
       that run.
    """
    now = f"at epoch {epoch} (step {step})"
    if in_force:
        names = list(dict.fromkeys(a.rule for a in in_force))
        noun = "rule" if len(names) == 1 else "rules"
        lines = [f"**{len(names)} alert {noun} in force: {md(', '.join(names))}** {now}", ""]
        for alert in in_force:
            message = alert.message.removeprefix(f"{alert.rule}: ").removesuffix(
                when(alert.epoch, alert.step))  # both said by the entry's head
            entry = [f"- **{md(alert.rule)}** ({alert.severity}), {_since(alert)}, "
                     f"{md(_where(alert))}{md(where(alert))}: {md(message)}"]
            entry += [f"  *{label}:* {md(part)}" for label, part in
                      (("Likely", alert.meaning), ("Try", alert.advice)) if part]
            lines += ["  \n".join(entry), ""]
    else:
        lines = [f"**Healthy**: no alert condition in force {now}", ""]
    news = [f"raised {md(a.rule)} ({a.severity})" for a in raised]
    news += [f"cleared {md(c)}" for c in cleared]
    lines += [f"This analysis: {'; '.join(news) if news else 'nothing raised or cleared'}.", ""]
    total = sum(totals.values())
    if total:
        counts = ", ".join(f"{md(name)} {count}" for name, count in totals.items() if count)
        lines += [f"Raised so far: {total} ({counts}).", ""]
    else:
        lines += ["Raised so far: none.", ""]
    if rules is not None:
        lines += ["**Rules** (checked at every analysis)", "", rules_markdown(rules)]
    return "\n".join(lines).rstrip() + "\n"
