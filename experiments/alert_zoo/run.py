"""The alert zoo: train (or load from the cache) healthy and broken runs of two model/data pairs
and score the library's default alert rules against loss-based baselines.

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 .venv/bin/python -m experiments.alert_zoo.run
    ... -m experiments.alert_zoo.run --seeds 0 1          # the threshold-choosing seeds only
    ... -m experiments.alert_zoo.run --score-only         # re-score cached histories (no training)
    ... -m experiments.alert_zoo.run --quick --out /tmp/zoo   # a 2-3 minute smoke run

Each run is cached in ``histories/<pair>/<kind>_seed<k>.json.gz`` (losses per epoch and the
monitor's history); a run whose definition is unchanged is not retrained. The protocol (what
counts as broken, detected, lead; which seeds choose and which test) is in RESULTS.md, above
the generated tables.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.alert_zoo.run")

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from experiments.alert_zoo import detectors
from experiments.alert_zoo.score import (
    RunScore,
    describe_epoch,
    mark_broken,
    score_run,
    stop_signal_rows,
    summary_rows,
)
from experiments.alert_zoo.train import HISTORIES, cache_path, load_cached, train_run
from experiments.alert_zoo.zoo import HEALTHY, PAIRS, Pair
from experiments.common import command_line, machine_line, markdown_table, write_results
from experiments.data_check import require_fashion_mnist
from svd_callback.examples.data import FASHION_MNIST_ROOT

HERE = Path(__file__).resolve().parent
TUNING_SEEDS = (0, 1)
"""Seeds whose runs chose the default rules' thresholds; every other seed is held out."""
QUICK_KINDS = ("adam", "sgd", "lr_nan", "lr_dead", "frozen")
QUICK = {"digits_cnn": {"epochs": 4, "data": {}},
         "fashion_resnet": {"epochs": 3, "data": {"train_size": 1000, "val_size": 500}}}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: every seed of each pair")
    parser.add_argument("--kinds", nargs="+", default=None, help="default: every kind")
    parser.add_argument("--retrain", action="store_true", help="ignore the cache")
    parser.add_argument("--score-only", action="store_true",
                        help="score cached runs only; missing ones are reported, not trained")
    parser.add_argument("--quick", action="store_true",
                        help=f"kinds {', '.join(QUICK_KINDS)}, seed 0, a few epochs on small "
                             "data (a smoke run; needs --out, writes no RESULTS.md)")
    parser.add_argument("--out", default=str(HISTORIES), help="cache folder")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", "--data.root", dest="root", default=FASHION_MNIST_ROOT,
                        help="folder of the Fashion-MNIST IDX files (fashion_resnet)")
    args = parser.parse_args(argv)
    if args.quick and Path(args.out).resolve() == HISTORIES.resolve():
        parser.error("--quick needs --out (a folder apart from the cached full runs)")
    return args


def planned(args: argparse.Namespace) -> list[tuple[Pair, str, int, dict]]:
    """(pair, kind, seed, overrides) of every run asked for."""
    runs = []
    for name in args.pairs:
        pair = PAIRS[name]
        overrides: dict = {}
        kinds = [k.name for k in pair.kinds]
        seeds = pair.seeds if args.seeds is None else [s for s in args.seeds if s in pair.seeds]
        if args.quick:
            overrides, kinds, seeds = QUICK[name], list(QUICK_KINDS), [0]
        if args.kinds:
            kinds = [k for k in kinds if k in args.kinds]
        runs.extend((pair, kind, seed, overrides) for seed in seeds for kind in kinds)
    return runs


def collect(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Train or load every planned run; returns the records and the runs missing (with
    ``--score-only``)."""
    records, missing = [], []
    root = Path(args.out)
    for pair, kind_name, seed, overrides in planned(args):
        kind = pair.kind(kind_name)
        if args.score_only:
            record = load_cached(cache_path(root, pair, kind, seed))
            if record is None:
                missing.append(f"{pair.name}/{kind.name}/seed {seed}")
                continue
        else:
            record, trained = train_run(pair, kind, seed, root=root, retrain=args.retrain,
                                        epochs=overrides.get("epochs"),
                                        data=overrides.get("data"), data_root=args.root)
            print(f"{pair.name:15s} {kind.name:16s} seed {seed}: best val acc "
                  f"{detectors.best_accuracy(record['epochs']):.3f}, "
                  f"{record['seconds']:.0f} s training{'' if trained else ' (cached)'}",
                  flush=True)
        records.append(record)
    return records, missing


def run_table(scores: Sequence[RunScore]) -> str:
    rows = []
    for s in scores:
        rules = "; ".join(f"{rule} {epoch}" for rule, epoch in sorted(s.rules.items(),
                                                                      key=lambda kv: kv[1]))
        lead = (s.losses - s.spectral) if s.spectral is not None and s.losses is not None \
            else "-"
        verdict = "healthy" if s.healthy else ("broken" if s.broken else "not broken")
        rows.append([s.kind, s.seed, verdict, s.best_acc, s.final_acc, s.epochs_run,
                     describe_epoch(s.decided) if s.broken else "-", rules or "none",
                     *[describe_epoch(s.baselines[n]) for n in detectors.BASELINES], lead])
    header = ["kind", "seed", "verdict", "best acc", "final acc", "epochs", "decided",
              "monitor alerts (rule first epoch)", *detectors.BASELINES, "lead"]
    return markdown_table(header, rows)


def summary_table(scores: Sequence[RunScore]) -> str:
    header = ["detector", "injected failures detected", "broken runs detected",
              "broken, detected by the decided epoch", "healthy runs alarmed", "precision",
              "median lead (epochs)"]
    return markdown_table(header, summary_rows(scores))


def report(scores: Sequence[RunScore], pairs: Sequence[str]) -> str:
    parts = [f"Generated by `{command_line()}` on {machine_line()}.", ""]
    for name in pairs:
        pair = PAIRS[name]
        mine = [s for s in scores if s.pair == name]
        if not mine:
            continue
        minutes = sum(s.seconds for s in mine) / 60
        parts += [f"## {name}: {pair.what}", "",
                  f"{len(mine)} runs, {pair.epochs} epochs planned, {minutes:.1f} min of "
                  "training with the monitor.", ""]
        for title, keep in (("Threshold-choosing seeds " + ", ".join(map(str, TUNING_SEEDS)),
                             lambda s: s.seed in TUNING_SEEDS),
                            ("Held-out seeds", lambda s: s.seed not in TUNING_SEEDS)):
            chosen = [s for s in mine if keep(s)]
            if chosen:
                seeds = sorted({s.seed for s in chosen})
                parts += [f"### {title} (seeds {', '.join(map(str, seeds))})", "",
                          summary_table(chosen), ""]
        parts += ["### Every run", "", run_table(mine), ""]
        parts += ["### The README's stop and checkpoint signals (every seed)", "",
                  "`alerts/active` is the number of warning/stop conditions in force; "
                  "`EarlyStopping(monitor=\"alerts/active\", mode=\"min\", "
                  "divergence_threshold=0.5, ...)` stops at the first analysis where it is "
                  "above 0; `ModelCheckpoint(monitor=\"alerts/healthy_step\", mode=\"max\")` "
                  "keeps the last checkpoint taken at level 0 (its validation accuracy against "
                  "the run's last).", "",
                  markdown_table(["kind", "role", "analyses with alerts/active > 0",
                                  "EarlyStopping stops at (per seed)",
                                  "ModelCheckpoint keeps epoch (acc there vs last)"],
                                 stop_signal_rows(mine)), ""]
        kinds = {k.name: k for k in pair.kinds}
        parts += ["Kinds: " + "; ".join(f"`{n}` ({'healthy' if k.role == HEALTHY else 'failure'}"
                                         f"): {k.what}" for n, k in kinds.items()) + ".", ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if "fashion_resnet" in args.pairs and not args.score_only:
        require_fashion_mnist(args.root)  # exits 2 with the instruction
    started = time.perf_counter()
    records, missing = collect(args)
    if missing:
        print("not cached (train them without --score-only): " + ", ".join(missing),
              file=sys.stderr)
    scores = mark_broken(score_run(r) for r in records)
    text = report(scores, args.pairs)
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s wall, "
          f"{sum(s.seconds for s in scores) / 60:.1f} min of training", flush=True)
    if not args.quick and not missing:
        write_results(args.results, "Alert zoo", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
