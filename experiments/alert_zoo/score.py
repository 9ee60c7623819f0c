"""Score the monitor's rule sets and the baseline detectors on cached zoo runs.

Per run: the outcome (broken or not, decided epoch), and for every detector the analyses at
which it fires; the monitor's rules are replayed from the cached history (any rule set: pass
``rule_set``), in three variants: the rules as they are, and the same rules reading only the
norms (sigma_max and the Frobenius norm, with and without the per-layer weight-motion
metrics). Across runs: false alarms per healthy run and per analysis, recall per failure kind,
delay from the onset, precision at a stated base rate, with Wilson intervals (runs taken as
independent) and bootstrap intervals over (pair, kind) cells (cells resampled, then runs
within them).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from experiments.alert_zoo import detectors
from experiments.alert_zoo.detectors import Firing, at
from experiments.alert_zoo.zoo import HEALTHY, PAIRS
from svd_callback.aggregates import aggregate
from svd_callback.alerts import COUNTED_SEVERITIES
from svd_callback.metric_groups import METRIC_GROUPS
from svd_callback.report import Report
from svd_callback.sinks.history_rows import (
    RecordedAnalysis,
    read_analyses,
    recorded_rules,
    replay_alerts,
)

MONITOR = "monitor"
NORMS_MOTION = "monitor, norms + motion"
NORMS_ONLY = "monitor, norms only"
NORM_METRICS = ("spectral_norm", "frobenius_norm", "log_norm", "log_spectral_norm")
"""What the norm-only ablation lets the rules read: sigma_max, the Frobenius norm and their
logarithms."""
MOTION_METRICS = tuple(METRIC_GROUPS["motion"])
BASE_RATE = 0.1
"""Share of broken runs at which precision is stated."""
BOOTSTRAP = 2000
ANY_LOSS = "any loss baseline"
ANY_BASELINE = "any baseline"

RuleSet = Callable[[Sequence[dict[str, Any]]], list[Any]]
"""History rows -> a fresh rule set (rules keep state: one set per replay)."""

FROZEN_AT = "e4dcc07"
"""The commit at which the default rules were frozen before the held-out runs were trained."""
WARNING_AT_FREEZE = ("AlphaBelow", "MeanAlphaTrend", "SpectralNormGrowth",
                     "ClassLostSpecificNeurons")
"""Names of the rules that logged warnings at :data:`FROZEN_AT` (their action since is stated in
RESULTS.md)."""


def frozen_rules(history: Sequence[dict[str, Any]]) -> list[Any]:
    """The rules the callback runs by default for the run (:func:`recorded_rules`) with the
    actions they had at :data:`FROZEN_AT`: each of :data:`WARNING_AT_FREEZE` logs a warning."""
    rules = recorded_rules(history)
    for rule in rules:
        if rule.name in WARNING_AT_FREEZE:
            rule.action = "log"
    return rules


RULE_SETS: dict[str, RuleSet] = {"current": recorded_rules, "frozen": frozen_rules}
"""``--rules`` of ``run.py``: the defaults as they are, or as they were frozen."""


def masked(analyses: Sequence[RecordedAnalysis], keep: Iterable[str]) -> list[RecordedAnalysis]:
    """The analyses with every layer's metrics restricted to ``keep``, the class statistics
    dropped and the model aggregates restricted to statistics of kept metrics
    (:func:`svd_callback.aggregates.aggregate`); the trainer's scalars and skip reasons are
    kept: what a rule set reading only those metrics sees."""
    keep = set(keep)

    def kept(key: str) -> bool:
        found = aggregate(key)
        return found is not None and found.metric in keep

    out = []
    for entry in analyses:
        report = Report(replace(record, metrics={k: v for k, v in record.metrics.items()
                                                 if k in keep})
                        for record in entry.report)
        summary = {mode: {k: v for k, v in values.items() if kept(k)}
                   for mode, values in entry.summary.items()}
        out.append(replace(entry, report=report, summary=summary, class_metrics={}))
    return out


@dataclass
class MonitorReplay:
    """One replay of a rule set: its warning/stop alerts, their analyses, the first epoch of
    each rule, and ``alerts/active`` after each analysis."""

    firing: Firing
    alerts: list[Any]
    rules: dict[str, int]
    levels: list[tuple[int, int]]


def replay(analyses: Sequence[RecordedAnalysis], rules: Sequence[Any]) -> MonitorReplay:
    """:func:`svd_callback.sinks.history_rows.replay_alerts` of ``rules`` over ``analyses``,
    its warning and stop alerts as a :class:`Firing`."""
    levels: list[tuple[int, int]] = []
    alerts = [a for a in replay_alerts(analyses, rules, levels)
              if a.severity in COUNTED_SEVERITIES]
    said: dict[int, str] = {}
    rules_first: dict[str, int] = {}
    for alert in alerts:
        rules_first[alert.rule] = min(rules_first.get(alert.rule, alert.epoch), alert.epoch)
        said[alert.epoch] = said.get(alert.epoch, "") + ("; " if alert.epoch in said else "") \
            + alert.rule
    return MonitorReplay(at(list(said), said), alerts, rules_first, levels)


@dataclass
class RunScore:
    """One run, scored."""

    pair: str
    kind: str
    seed: int
    role: str
    split: str
    onset: int
    midrun: bool
    classes: bool
    epochs_run: int
    best_acc: float
    window_best: float
    final_acc: float
    seconds: float
    cpu_seconds: float | None
    has_accuracy: bool
    broken: bool = False
    decided: int | None = None
    firings: dict[str, Firing | None] = field(default_factory=dict)
    monitor: MonitorReplay | None = None
    accs: dict[int, float] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.role == HEALTHY

    @property
    def start(self) -> int:
        """First analysis of the failure window: 0 for a failure present from the start (the
        initial weights may already show it), onset + 1 for a mid-run one."""
        return self.onset + 1 if self.midrun else 0

    @property
    def analyses(self) -> int:
        return self.epochs_run + 1

    def first(self, detector: str) -> int | None:
        """The detector's first firing in the failure window (every analysis of a healthy
        run)."""
        firing = self.firings.get(detector)
        return None if firing is None else firing.first(0 if self.healthy else self.start)

    def prefix_alarms(self, detector: str) -> list[int]:
        """Firings at analyses <= onset of a mid-run failure (its healthy start)."""
        firing = self.firings.get(detector)
        if firing is None or not self.midrun:
            return []
        return firing.before(self.onset)

    def delay(self, detector: str) -> int | None:
        """First firing in the window minus the onset (None: never fired in the window)."""
        first = self.first(detector)
        return None if first is None else first - self.onset

    def available(self, detector: str) -> bool:
        return self.firings.get(detector) is not None


def score_run(record: dict[str, Any], rule_set: RuleSet = recorded_rules) -> RunScore:
    """Replay the monitor variants and every baseline on one cached run; ``rule_set(history
    rows)`` gives the rules replayed (default: the callback's own choice for the run,
    :func:`~svd_callback.sinks.history_rows.recorded_rules`)."""
    rows = record["epochs"]
    pair = PAIRS.get(record["pair"])
    chance = detectors.CHANCE if pair is None else pair.chance
    onset = int(record.get("onset", 0) or 0)
    midrun = record.get("switch") is not None
    history = record["history"]
    analyses = read_analyses(history)
    main = replay(analyses, rule_set(history))
    firings: dict[str, Firing | None] = {
        MONITOR: main.firing,
        NORMS_MOTION: replay(masked(analyses, NORM_METRICS + MOTION_METRICS),
                             rule_set(history)).firing,
        NORMS_ONLY: replay(masked(analyses, NORM_METRICS), rule_set(history)).firing,
    }
    has_probe = bool(record.get("probe"))
    for name, fn in detectors.baselines(chance).items():
        firings[name] = fn(record) if has_probe or name in detectors.LOSS_BASELINES else None
    loss = [firings[n] for n in detectors.LOSS_BASELINES]
    firings[ANY_LOSS] = detectors.union([f for f in loss if f is not None])
    every = [f for n, f in firings.items() if n not in (MONITOR, NORMS_MOTION, NORMS_ONLY,
                                                         ANY_LOSS) and f is not None]
    firings[ANY_BASELINE] = detectors.union(every) if has_probe else None
    start = onset + 1 if midrun else 1
    accs = [r["val_acc"] for r in rows[1:]]
    has_accuracy = chance is not None
    return RunScore(
        pair=record["pair"], kind=record["kind"], seed=int(record["seed"]), role=record["role"],
        split=record.get("split") or (pair.split_of(int(record["seed"])) if pair else "tuning"),
        onset=onset, midrun=midrun, classes=bool(record.get("classes")),
        epochs_run=int(rows[-1]["epoch"]),
        best_acc=detectors.best_accuracy(rows), window_best=detectors.best_accuracy(rows, start),
        final_acc=accs[-1] if accs and math.isfinite(accs[-1]) else 0.0,
        seconds=float(record["seconds"]), cpu_seconds=record.get("cpu_seconds"),
        has_accuracy=has_accuracy,
        decided=detectors.decided_epoch(rows, start), firings=firings, monitor=main,
        accs={int(r["epoch"]): r["val_acc"] for r in rows},
    )


def mark_broken(scores: Iterable[RunScore]) -> list[RunScore]:
    """Set ``broken`` on injected failures whose best accuracy over the failure window is
    :data:`detectors.BROKEN_MARGIN` below the median best accuracy of the healthy runs (class
    analysis duplicates left out) of the same pair and seed, or whose loss went non-finite in
    the window."""
    scores = list(scores)
    reference: dict[tuple[str, int], list[float]] = {}
    for s in scores:
        if s.healthy and not s.classes:
            reference.setdefault((s.pair, s.seed), []).append(s.best_acc)
    for s in scores:
        if s.healthy:
            continue
        nan = s.firings.get("non-finite loss")
        nan_loss = nan is not None and nan.first(s.start) is not None
        healthy = reference.get((s.pair, s.seed))
        median = statistics.median(healthy) if healthy else math.nan
        s.broken = nan_loss or (s.has_accuracy and s.window_best < median
                                - detectors.BROKEN_MARGIN)
    return scores


# ---------------------------------------------------------------------- intervals
def fraction(successes: int, total: int) -> str:
    """``k/n [low, high]`` with the 95% Wilson interval."""
    if total == 0:
        return "-"
    low, high = detectors.wilson(successes, total)
    return f"{successes}/{total} [{low:.2f}, {high:.2f}]"


def cells_of(scores: Sequence[RunScore], outcome: Callable[[RunScore], bool]
             ) -> list[list[int]]:
    """The 0/1 outcomes grouped by (pair, kind) cell."""
    cells: dict[tuple[str, str], list[int]] = {}
    for s in scores:
        cells.setdefault((s.pair, s.kind), []).append(int(outcome(s)))
    return list(cells.values())


def bootstrap(groups: Sequence[list[list[int]]], statistic: Callable[[np.ndarray], np.ndarray],
              reps: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of ``statistic(rates)`` where each rate is pooled over one group
    of cells resampled two-stage (cells with replacement, then runs within each drawn cell with
    replacement); groups are resampled independently. Resampling the n runs of a cell with k
    successes draws Binomial(n, k / n) successes, which is how the second stage is drawn.
    ``statistic`` maps the rates (one array of ``reps`` per group, in order) to ``reps``
    values. (nan, nan) when a group is empty."""
    if any(not cells for cells in groups):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    rates = []
    for cells in groups:
        sizes = np.array([len(c) for c in cells])
        shares = np.array([sum(c) / len(c) for c in cells])
        drawn = rng.integers(0, len(cells), (reps, len(cells)))
        hits = rng.binomial(sizes[drawn], shares[drawn])
        rates.append(hits.sum(axis=1) / sizes[drawn].sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.asarray(statistic(rates), dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def precision_at(recall: Any, false_alarm: Any, base_rate: float = BASE_RATE) -> Any:
    """Precision when ``base_rate`` of runs are broken: pi R / (pi R + (1 - pi) F) (NaN where
    neither fires); elementwise on arrays."""
    hit = base_rate * np.asarray(recall, dtype=float)
    false = (1 - base_rate) * np.asarray(false_alarm, dtype=float)
    total = hit + false
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(total > 0, hit / np.where(total > 0, total, 1.0), np.nan)
    return float(value) if value.ndim == 0 else value


def _interval(low: float, high: float) -> str:
    return "-" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


# ---------------------------------------------------------------------- tables
def detector_names(scores: Sequence[RunScore]) -> list[str]:
    names = list(scores[0].firings) if scores else []
    return [n for n in names if any(s.available(n) for s in scores)]


def summary_rows(scores: Sequence[RunScore], names: Sequence[str] | None = None
                 ) -> list[list[Any]]:
    """Per detector: healthy runs alarmed (Wilson; cell bootstrap), alarmed analyses of healthy
    runs, mid-run failures alarmed before their onset, broken runs detected (Wilson; cell
    bootstrap) and within two analyses of the onset, the median delay from the onset, and the
    precision at :data:`BASE_RATE` (cell bootstrap)."""
    names = detector_names(scores) if names is None else names
    out = []
    for name in names:
        runs = [s for s in scores if s.available(name) and not s.classes]
        healthy = [s for s in runs if s.healthy]
        broken = [s for s in runs if not s.healthy and s.broken]
        midrun = [s for s in runs if s.midrun]
        alarmed = [s for s in healthy if s.first(name) is not None]
        analyses = sum(s.analyses for s in healthy)
        alarmed_analyses = sum(len(s.firings[name].epochs) for s in healthy)
        hits = [s for s in broken if s.first(name) is not None]
        soon = [s for s in hits if s.delay(name) <= 2]
        delays = [s.delay(name) for s in hits]
        prefix = [s for s in midrun if s.prefix_alarms(name)]
        false_cells = cells_of(healthy, lambda s, n=name: s.first(n) is not None)
        hit_cells = cells_of(broken, lambda s, n=name: s.first(n) is not None)
        recall = len(hits) / len(broken) if broken else math.nan
        false_rate = len(alarmed) / len(healthy) if healthy else math.nan
        out.append([
            name,
            fraction(len(alarmed), len(healthy)), _interval(*bootstrap([false_cells], _first)),
            f"{alarmed_analyses}/{analyses}" if analyses else "-",
            f"{len(prefix)}/{len(midrun)}" if midrun else "-",
            fraction(len(hits), len(broken)), _interval(*bootstrap([hit_cells], _first)),
            fraction(len(soon), len(broken)),
            f"{statistics.median(delays):g}" if delays else "-",
            _fmt(precision_at(recall, false_rate)),
            _interval(*bootstrap([hit_cells, false_cells],
                                 lambda r: precision_at(r[0], r[1]))),
        ])
    return out


SUMMARY_HEADER = ["detector", "healthy runs alarmed [Wilson]", "[cell bootstrap]",
                  "alarmed analyses / healthy analyses", "mid-run failures alarmed before onset",
                  "broken runs detected [Wilson]", "[cell bootstrap]",
                  "detected within 2 analyses of onset", "median delay from onset",
                  f"precision at {BASE_RATE:.0%} broken", "[cell bootstrap]"]


def _first(rates: list[float]) -> float:
    return rates[0]


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def kind_rows(scores: Sequence[RunScore], names: Sequence[str]) -> list[list[Any]]:
    """Per failure kind (over pairs): broken/injected runs, and per detector the broken runs
    detected with the median delay from the onset."""
    out = []
    failures = [s for s in scores if not s.healthy and not s.classes]
    for kind in dict.fromkeys(s.kind for s in failures):
        runs = [s for s in failures if s.kind == kind]
        broken = [s for s in runs if s.broken]
        row: list[Any] = [kind, ", ".join(sorted({s.pair for s in runs})),
                          f"{len(broken)}/{len(runs)}"]
        for name in names:
            mine = [s for s in broken if s.available(name)]
            hits = [s.delay(name) for s in mine if s.first(name) is not None]
            cell = f"{len(hits)}/{len(mine)}" if mine else "-"
            if hits:
                cell += f" ({statistics.median(hits):g})"
            row.append(cell)
        out.append(row)
    return out


def versus_rows(scores: Sequence[RunScore], baselines: Sequence[str],
                monitor: str = MONITOR) -> list[list[Any]]:
    """Per failure kind, over its broken runs, for each baseline: ``+a`` runs the monitor
    detected and the baseline did not, ``-b`` the reverse, ``e/t/l`` runs both detected with
    the monitor earlier / at the same analysis / later, and in brackets the median lead
    (baseline's first analysis - monitor's) over those runs."""
    out = []
    failures = [s for s in scores if not s.healthy and s.broken and not s.classes]
    for kind in dict.fromkeys(s.kind for s in failures):
        runs = [s for s in failures if s.kind == kind]
        row: list[Any] = [kind, len(runs)]
        for name in baselines:
            mine = [s for s in runs if s.available(name)]
            if not mine:
                row.append("-")
                continue
            only_m = only_b = earlier = tied = later = 0
            leads = []
            for s in mine:
                m, b = s.first(monitor), s.first(name)
                if m is not None and b is None:
                    only_m += 1
                elif b is not None and m is None:
                    only_b += 1
                elif m is not None and b is not None:
                    earlier += m < b
                    tied += m == b
                    later += m > b
                    leads.append(b - m)
            lead = f" ({statistics.median(leads):+g})" if leads else ""
            row.append(f"+{only_m}/-{only_b}; {earlier}/{tied}/{later}{lead}")
        out.append(row)
    return out


def healthy_alarm_rows(scores: Sequence[RunScore]) -> list[list[Any]]:
    """Every healthy run (class runs included) on which the monitor raised a warning or stop:
    its rules and the first alert's message."""
    out = []
    for s in scores:
        if not s.healthy or s.monitor is None or not s.monitor.alerts:
            continue
        rules = "; ".join(f"{r} {e}" for r, e in sorted(s.monitor.rules.items(),
                                                          key=lambda kv: kv[1]))
        out.append([s.pair, s.kind, s.seed, rules, s.monitor.alerts[0].message[:300]])
    return out


def prefix_alarm_rows(scores: Sequence[RunScore]) -> list[list[Any]]:
    """Mid-run failures on which the monitor fired before the onset (on their healthy start)."""
    out = []
    for s in scores:
        early = s.prefix_alarms(MONITOR)
        if early:
            out.append([s.pair, s.kind, s.seed, s.onset,
                        "; ".join(f"{s.firings[MONITOR].said[k]} {k}" for k in early)])
    return out


def stop_signal_rows(scores: Sequence[RunScore]) -> list[list[Any]]:
    """Per kind: the analyses with ``alerts/active`` > 0, the epoch at which the README's
    ``EarlyStopping(monitor="alerts/active", mode="min", divergence_threshold=0.5)`` stops
    (the first analysis with a level above 0), and the epoch whose checkpoint
    ``ModelCheckpoint(monitor="alerts/healthy_step", mode="max")`` keeps (the last analysis with
    level 0) with its validation accuracy against the run's last one, per seed."""
    out = []
    for kind in dict.fromkeys(s.kind for s in scores):
        runs = [s for s in scores if s.kind == kind and s.monitor is not None]
        if not runs:
            continue
        raised = sum(1 for s in runs for _, level in s.monitor.levels if level > 0)
        total = sum(len(s.monitor.levels) for s in runs)
        stops, kept = [], []
        for s in runs:
            stop = next((e for e, level in s.monitor.levels if level > 0), None)
            stops.append(describe_epoch(stop))
            last = max((e for e, level in s.monitor.levels if level == 0), default=None)
            final = s.accs.get(s.epochs_run, math.nan)
            acc = s.accs.get(last, math.nan) if last is not None else math.nan
            kept.append("-" if last is None else f"{last} ({acc:.3f} vs {final:.3f})")
        out.append([kind, runs[0].role, f"{raised}/{total}", ", ".join(stops), "; ".join(kept)])
    return out


def describe_epoch(value: int | None) -> str:
    return "-" if value is None else str(value)
