"""Score a rule set and the loss baselines on cached zoo runs: per run, the outcome (broken,
decided epoch), the first alert of each rule, the baselines' detection epochs and the lead;
per pair, recall, precision and false alarms with 95% Wilson intervals."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from experiments.alert_zoo import detectors
from experiments.alert_zoo.zoo import HEALTHY
from svd_callback.alerts import COUNTED_SEVERITIES
from svd_callback.sinks.history_rows import read_analyses, recorded_rules, replay_alerts


@dataclass
class RunScore:
    """One run, scored."""

    pair: str
    kind: str
    seed: int
    role: str
    best_acc: float
    final_acc: float
    epochs_run: int
    seconds: float
    broken: bool = False
    decided: int | None = None
    rules: dict[str, int] = field(default_factory=dict)  # rule -> first active alert epoch
    alerts: list[Any] = field(default_factory=list)  # active alerts
    baselines: dict[str, int | None] = field(default_factory=dict)
    levels: list[tuple[int, int]] = field(default_factory=list)  # (epoch, alerts/active)
    accs: dict[int, float] = field(default_factory=dict)  # epoch -> validation accuracy

    @property
    def healthy(self) -> bool:
        return self.role == HEALTHY

    @property
    def spectral(self) -> int | None:
        """First epoch of an alert of severity warning or stop (None: silent)."""
        return min(self.rules.values(), default=None)

    @property
    def losses(self) -> int | None:
        """First epoch any loss baseline fires."""
        return min((e for e in self.baselines.values() if e is not None), default=None)


def score_run(record: dict[str, Any], rule_set: Callable[[Sequence[dict]], list[Any]]
              = recorded_rules) -> RunScore:
    """One cached run scored: ``rule_set(history rows)`` gives the rules replayed (default:
    the callback's own choice for the run, :func:`recorded_rules`)."""
    rows = record["epochs"]
    analyses = read_analyses(record["history"])
    levels: list[tuple[int, int]] = []
    alerts = [a for a in replay_alerts(analyses, rule_set(record["history"]), levels)
              if a.severity in COUNTED_SEVERITIES]
    firsts: dict[str, int] = {}
    for alert in alerts:
        firsts[alert.rule] = min(firsts.get(alert.rule, alert.epoch), alert.epoch)
    accs = [r["val_acc"] for r in rows[1:]]
    return RunScore(
        pair=record["pair"], kind=record["kind"], seed=record["seed"], role=record["role"],
        best_acc=detectors.best_accuracy(rows),
        final_acc=accs[-1] if accs and math.isfinite(accs[-1]) else 0.0,
        epochs_run=int(rows[-1]["epoch"]), seconds=float(record["seconds"]),
        decided=detectors.decided_epoch(rows), rules=firsts, alerts=alerts,
        baselines={name: fn(rows) for name, fn in detectors.BASELINES.items()},
        levels=levels, accs={int(r["epoch"]): r["val_acc"] for r in rows},
    )


def mark_broken(scores: Iterable[RunScore]) -> list[RunScore]:
    """Set ``broken`` on injected failures whose best accuracy is :data:`detectors.BROKEN_MARGIN`
    below the worst healthy run of the same pair and seed, or whose loss went non-finite."""
    scores = list(scores)
    reference: dict[tuple[str, int], float] = {}
    for s in scores:
        if s.healthy:
            key = (s.pair, s.seed)
            reference[key] = min(reference.get(key, math.inf), s.best_acc)
    for s in scores:
        if s.healthy:
            continue
        worst = reference.get((s.pair, s.seed), math.nan)
        nan_loss = s.baselines.get("non-finite loss") is not None
        s.broken = nan_loss or s.best_acc < worst - detectors.BROKEN_MARGIN
    return scores


def fraction(successes: int, total: int) -> str:
    low, high = detectors.wilson(successes, total)
    if total == 0:
        return "-"
    return f"{successes}/{total} [{low:.2f}, {high:.2f}]"


def summary_rows(scores: Sequence[RunScore]) -> list[list[Any]]:
    """Per detector: injected failures detected, broken runs detected and detected by their
    decided epoch, healthy runs alarmed, precision over every run it fired on, and (for the
    monitor) the median lead over the earliest loss baseline (positive: the spectra first)."""
    failures = [s for s in scores if not s.healthy]
    broken = [s for s in failures if s.broken]
    healthy = [s for s in scores if s.healthy]
    detectors_: dict[str, Callable[[RunScore], int | None]] = {
        "monitor's default rules (warning/stop)": lambda s: s.spectral,
        **{name: (lambda s, n=name: s.baselines[n]) for name in detectors.BASELINES},
        "any loss baseline": lambda s: s.losses,
    }
    out = []
    for name, epoch_of in detectors_.items():
        hits = [s for s in failures if epoch_of(s) is not None]
        broken_hits = [s for s in broken if epoch_of(s) is not None]
        in_time = [s for s in broken_hits if epoch_of(s) <= s.decided]
        false = [s for s in healthy if epoch_of(s) is not None]
        leads = [s.losses - s.spectral for s in failures
                 if s.spectral is not None and s.losses is not None]
        out.append([
            name, fraction(len(hits), len(failures)), fraction(len(broken_hits), len(broken)),
            fraction(len(in_time), len(broken)), fraction(len(false), len(healthy)),
            fraction(len(hits), len(hits) + len(false)),
            statistics.median(leads) if name.startswith("monitor") and leads
            else "-",
        ])
    return out


def stop_signal_rows(scores: Sequence[RunScore]) -> list[list[Any]]:
    """Per kind: the analyses with ``alerts/active`` > 0, the epoch at which the README's
    ``EarlyStopping(monitor="alerts/active", mode="min", divergence_threshold=0.5)`` stops
    (the first analysis with a level above 0), and the epoch whose checkpoint
    ``ModelCheckpoint(monitor="alerts/healthy_step", mode="max")`` keeps (the last analysis with
    level 0) with its validation accuracy against the run's last one, per seed."""
    out = []
    for kind in dict.fromkeys(s.kind for s in scores):
        runs = [s for s in scores if s.kind == kind]
        raised = sum(1 for s in runs for _, level in s.levels if level > 0)
        total = sum(len(s.levels) for s in runs)
        stops, kept = [], []
        for s in runs:
            stop = next((e for e, level in s.levels if level > 0), None)
            stops.append(describe_epoch(stop))
            last = max((e for e, level in s.levels if level == 0), default=None)
            final = s.accs.get(s.epochs_run, math.nan)
            acc = s.accs.get(last, math.nan) if last is not None else math.nan
            kept.append("-" if last is None else f"{last} ({acc:.3f} vs {final:.3f})")
        out.append([kind, runs[0].role, f"{raised}/{total}", ", ".join(stops), "; ".join(kept)])
    return out


def describe_epoch(value: int | None) -> str:
    return "-" if value is None else str(value)
