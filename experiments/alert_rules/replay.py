"""Replay the saved histories of ``experiments/alert_rules/histories`` through
:func:`svd_callback.alerts.default_rules` and print the RESULTS.md table (run, val accuracy,
rule, first alert epoch, severity).

    PYTHONPATH=. .venv/bin/python -m experiments.alert_rules.replay
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.alert_rules.replay")

import gzip
import json
from pathlib import Path

from svd_callback.alerts import COUNTED_SEVERITIES, default_rules
from svd_callback.sinks.history_rows import RecordedAnalysis, read_analyses, replay_alerts

HISTORIES = Path(__file__).parent / "histories"
RUNS = {
    "healthy": "configs/digits_cnn.yaml as shipped (Adam lr 0.003, 20 epochs)",
    "healthy_s1": "the same at seed 1 (seed_everything and data split)",
    "healthy_s2": "the same at seed 2",
    "demo": "svd-callback demo (SmallCNN on digits, 8 epochs, unfold mode)",
    "lr_10x": "the config at lr 0.03 (dead ReLUs)",
    "lr_tiny": "the config at lr 1e-6 (does not learn)",
    "frozen": "the config with features.2 frozen at its initial values",
    "bn_adam": "BatchNorm after every conv (models.BatchNormCNN), the config's Adam lr 0.003",
    "bn_sgd_wd": "the BatchNorm net, SGD lr 0.1 momentum 0.9 weight decay 5e-4",
    "bn_adam_lr_10x": "the BatchNorm net at Adam lr 0.03",
    "fashion_cnn": "configs/fashion_mnist_cnn.yaml as shipped (SmallCNN on Fashion-MNIST, Adam "
                   "lr 1e-3, 15 epochs, unfold + operator + slices modes)",
}


def normalizers_of(run: str) -> dict[str, str]:
    """Layer -> BatchNorm of the run's model (:func:`svd_callback.normalizers.output_normalizers`
    of a fresh instance: the structure does not change in training). These saved histories were
    written before the layer rows carried ``normalized_by``; the replay adds it to rows without
    it, as the analysis records it online (newer histories carry it)."""
    if not run.startswith("bn_"):
        return {}
    from experiments.alert_rules.models import BatchNormCNN
    from svd_callback.normalizers import output_normalizers

    return output_normalizers(BatchNormCNN())


def load(run: str) -> list[RecordedAnalysis]:
    """The analyses of one saved history (:func:`svd_callback.sinks.history_rows.read_analyses`),
    layer rows without ``normalized_by`` completed with it."""
    normalizers = normalizers_of(run)
    with gzip.open(HISTORIES / f"{run}.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        if row.get("type") == "layer":
            row.setdefault("normalized_by", normalizers.get(row["layer"]))
    return read_analyses(rows)


def first_alerts(run: str, rules=None) -> dict[str, tuple[int, str]]:
    """rule -> (first epoch it fired, severity) on one run."""
    out: dict[str, tuple[int, str]] = {}
    for alert in replay_alerts(load(run), default_rules(traps=False) if rules is None else rules):
        out.setdefault(alert.rule, (alert.epoch, alert.severity))
    return out


def active_counts(run: str, rules=None) -> list[tuple[int, int]]:
    """(epoch, ``alerts/active``) at every analysis of one run: the conditions of severity
    warning or stop in force after it (:meth:`svd_callback.alerts.AlertEngine.active`, as the
    monitor logs it online)."""
    levels: list[tuple[int, int]] = []
    replay_alerts(load(run), default_rules(traps=False) if rules is None else rules, levels)
    return levels


def raised_counts(run: str, rules=None) -> list[tuple[int, int]]:
    """(epoch, ``alerts/raised``) at every analysis of one run: the replayed alerts of severity
    warning or stop raised by that analysis."""
    analyses = load(run)
    alerts = replay_alerts(analyses, default_rules(traps=False) if rules is None else rules)
    counts: dict[tuple[int, int], int] = {(a.epoch, a.step): 0 for a in analyses}
    for alert in alerts:
        if alert.severity in COUNTED_SEVERITIES:
            counts[(alert.epoch, alert.step)] = counts.get((alert.epoch, alert.step), 0) + 1
    return [(epoch, n) for (epoch, _), n in sorted(counts.items())]


def spans(counts: list[tuple[int, int]]) -> str:
    """``epoch: value`` of the non-zero counts, consecutive epochs of one value as ``a-b``."""
    groups: list[list[int]] = []  # [first epoch, last epoch, value]
    for epoch, n in counts:
        if n and groups and groups[-1][2] == n and groups[-1][1] == epoch - 1:
            groups[-1][1] = epoch
        elif n:
            groups.append([epoch, epoch, n])
    return ", ".join(f"{a}: {n}" if a == b else f"{a}-{b}: {n}" for a, b, n in groups)


def val_accuracies(run: str) -> list[float]:
    return [a.training["val_acc"] for a in load(run) if "val_acc" in a.training]


def main() -> None:
    print("| run | what | final val acc | rule: first alert epoch (severity) |")
    print("|---|---|---|---|")
    for run, what in RUNS.items():
        acc = val_accuracies(run)
        fired = first_alerts(run)
        listed = "; ".join(f"{rule}: {epoch} ({sev})" for rule, (epoch, sev) in fired.items())
        print(f"| {run} | {what} | {acc[-1]:.3f} | {listed or 'none'} |")
    print()
    print("| run | analyses | alerts/active > 0 (epoch: value) | alerts/raised > 0 "
          "(epoch: value) | max active |")
    print("|---|---|---|---|---|")
    for run in RUNS:
        counts, raised = active_counts(run), raised_counts(run)
        nonzero, events = spans(counts), spans(raised)
        peak = max(n for _, n in counts)
        print(f"| {run} | {len(counts)} | {nonzero or 'none'} | {events or 'none'} | {peak} |")


if __name__ == "__main__":
    main()
