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
from svd_callback.alerts.base import fmt, rule_name
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
