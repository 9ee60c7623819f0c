"""The alert zoo: train (or load from the cache) healthy and broken runs of model/data pairs and
score the library's default alert rules against the detectors a user would pick instead.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.alert_zoo.run                # tuning set
    ... -m experiments.alert_zoo.run --split held-out   # held-out architectures and seeds
    ... -m experiments.alert_zoo.run --split all --score-only   # replay every cached run
    ... -m experiments.alert_zoo.run --quick --out /tmp/zoo     # a ~20 s smoke run

Each run is cached in ``histories/<pair>/<kind>_seed<k>.json.gz``; a run whose definition is
unchanged is not retrained. The protocol (pairs, kinds, seeds, outcome and detection
definitions, the rule freeze) is in RESULTS.md, above the generated tables.
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
from experiments.alert_zoo import score as sc
from experiments.alert_zoo.score import (
    FROZEN_AT,
    RULE_SETS,
    RunScore,
    mark_broken,
    score_run,
)
from experiments.alert_zoo.train import HISTORIES, cache_path, load_cached, train_run
from experiments.alert_zoo.zoo import HELD_OUT, PAIRS, Pair
from experiments.common import command_line, machine_line, markdown_table, write_results
from experiments.data_check import require_fashion_mnist
from svd_callback.examples.data import FASHION_MNIST_ROOT

HERE = Path(__file__).resolve().parent
SPLITS = ("tuning", "held-out", "all")
SPLIT_TITLES = {"tuning": "Tuning pairs, tuning seeds",
                "held-out architecture": "Held-out architectures",
                "held-out seed": "Tuning pairs, held-out seeds"}
QUICK = {
    "digits_cnn": {"kinds": ("adam", "adam_classes", "finetune", "lr_nan", "frozen",
                             "mid_lr_zero"), "epochs": 5, "data": {}},
    "fashion_mlp": {"kinds": ("adam", "lr_nan", "frozen"), "epochs": 3,
                    "data": {"train_size": 1000, "val_size": 500}},
}
"""The smoke run: a few kinds of the two cheapest pairs, seed 0, few epochs, small data."""
SHOWN = (sc.MONITOR, sc.NORMS_MOTION, sc.NORMS_ONLY, "chance accuracy",
         "EarlyStopping(val_loss)", "no progress", "non-finite loss", "AUTOTRAINER",
         "DeepDiagnosis", "gradient/activation checks")
"""Detectors in the per-kind and per-run tables."""
VERSUS = ("chance accuracy", "EarlyStopping(val_loss)", "no progress", "AUTOTRAINER",
          "DeepDiagnosis", "gradient/activation checks", sc.ANY_LOSS, sc.ANY_BASELINE)
"""Baselines the monitor is compared with run by run."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=SPLITS, default="tuning",
                        help="tuning: tuning pairs at tuning seeds; held-out: held-out "
                             "architectures and the held-out seeds of tuning pairs")
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--kinds", nargs="+", default=None, help="default: every kind")
    parser.add_argument("--retrain", action="store_true", help="ignore the cache")
    parser.add_argument("--score-only", action="store_true",
                        help="score cached runs only; missing ones are reported, not trained")
    parser.add_argument("--quick", action="store_true",
                        help="a few kinds of two pairs, seed 0, few epochs, small data (a "
                             "smoke run; needs --out, writes no RESULTS.md)")
    parser.add_argument("--out", default=str(HISTORIES), help="cache folder")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--no-results", action="store_true", help="write no RESULTS.md")
    parser.add_argument("--rules", choices=sorted(RULE_SETS), default="current",
                        help="the default rules as they are (current) or with the actions "
                             f"they had when frozen at {FROZEN_AT} (frozen)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", "--data.root", dest="root", default=FASHION_MNIST_ROOT,
                        help="folder of the Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    if args.quick and Path(args.out).resolve() == HISTORIES.resolve():
        parser.error("--quick needs --out (a folder apart from the cached full runs)")
    return args


def planned(args: argparse.Namespace) -> list[tuple[Pair, str, int, dict]]:
    """(pair, kind, seed, overrides) of every run asked for."""
    if args.quick:
        names = [n for n in QUICK if args.pairs is None or n in args.pairs]
    else:
        names = args.pairs or list(PAIRS)
    runs = []
    for name in names:
        pair = PAIRS[name]
        kinds = [k.name for k in pair.kinds]
        overrides: dict = {}
        if args.quick:
            seeds: Sequence[int] = [0]
            kinds, overrides = list(QUICK[name]["kinds"]), QUICK[name]
        elif args.split == "tuning":
            seeds = pair.tuning_seeds
        elif args.split == "held-out":
            seeds = pair.heldout_seeds
        else:
            seeds = pair.seeds
        if args.seeds is not None:
            seeds = [s for s in seeds if s in args.seeds]
        if args.kinds:
            kinds = [k for k in kinds if k in args.kinds]
        runs.extend((pair, kind, seed, overrides) for seed in seeds for kind in kinds
                    if pair.kind(kind).runs_at(seed))
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
            print(f"{pair.name:15s} {kind.name:18s} seed {seed}: best val acc "
                  f"{detectors.best_accuracy(record['epochs']):.3f}, "
                  f"{record['seconds']:.0f} s training{'' if trained else ' (cached)'}",
                  flush=True)
        records.append(record)
    return records, missing


def run_table(scores: Sequence[RunScore]) -> str:
    rows = []
    for s in scores:
        rules = "none"
        if s.monitor is not None and s.monitor.rules:
            rules = "; ".join(f"{rule} {epoch}" for rule, epoch in
                              sorted(s.monitor.rules.items(), key=lambda kv: kv[1]))
        verdict = "healthy" if s.healthy else ("broken" if s.broken else "not broken")
        firsts = [sc.describe_epoch(s.first(n)) if s.available(n) else "n/a" for n in SHOWN[1:]]
        rows.append([s.kind, s.seed, verdict, s.window_best if s.has_accuracy else "-",
                     s.final_acc if s.has_accuracy else "-", s.onset if s.midrun else "-",
                     rules, *firsts])
    header = ["kind", "seed", "verdict", "best acc (window)", "final acc", "onset",
              "monitor alerts (rule first epoch)", *SHOWN[1:]]
    return markdown_table(header, rows)


def split_section(title: str, scores: Sequence[RunScore]) -> list[str]:
    healthy = [s for s in scores if s.healthy and not s.classes]
    failures = [s for s in scores if not s.healthy]
    broken = [s for s in failures if s.broken]
    names = sc.detector_names(scores)
    pairs = ", ".join(sorted({s.pair for s in scores}))
    seeds = ", ".join(map(str, sorted({s.seed for s in scores})))
    return [
        f"## {title}", "",
        f"Pairs {pairs}; seeds {seeds}: {len(healthy)} healthy runs, {len(failures)} "
        f"injected failures of which {len(broken)} broken.", "",
        markdown_table(sc.SUMMARY_HEADER, sc.summary_rows(scores, names)), "",
        "### Broken runs detected per kind (median delay from onset, in analyses)", "",
        markdown_table(["kind", "pairs", "broken/injected", *SHOWN],
                       sc.kind_rows(scores, SHOWN)), "",
        "### What the monitor adds over each baseline, per kind (broken runs)", "",
        "`+a/-b; e/t/l`: a runs detected by the monitor and not by the baseline, b the "
        "reverse; of the runs both detected, e where the monitor fired at an earlier analysis, "
        "t at the same, l later, and in brackets the median lead in analyses (the baseline's "
        "first firing minus the monitor's; positive: the monitor first).", "",
        markdown_table(["kind", "broken runs", *VERSUS], sc.versus_rows(scores, VERSUS)), "",
    ]


def report(scores: Sequence[RunScore], rules: str = "current") -> str:
    """The generated part of RESULTS.md; with ``rules="frozen"`` (the rules' actions as frozen,
    :func:`~experiments.alert_zoo.score.frozen_rules`) only the summary per split and the
    healthy runs alarmed, under headings that say so."""
    parts = [f"Generated by `{command_line()}` on {machine_line()}.", ""]
    main = [s for s in scores if not s.classes]
    minutes = sum(s.seconds for s in scores) / 60
    parts += [f"{len(scores)} runs, {minutes:.1f} min of training with the monitor and the "
              "probe recorder.", ""]
    frozen = rules != "current"
    label = f" (rules as frozen at {FROZEN_AT})" if frozen else ""
    for split, title in SPLIT_TITLES.items():
        chosen = [s for s in main if s.split == split]
        if chosen:
            parts += split_section(title + label, chosen)
    alarms = sc.healthy_alarm_rows(scores)
    parts += [f"## Healthy runs the monitor alarmed on{label}", "",
              markdown_table(["pair", "kind", "seed", "rules (first epoch)", "first message"],
                             alarms) if alarms else "None.", ""]
    if frozen:
        return "\n".join(parts)
    early = sc.prefix_alarm_rows(scores)
    parts += ["## Mid-run failures the monitor alarmed on before their onset", "",
              markdown_table(["pair", "kind", "seed", "onset", "alerts (epoch)"], early)
              if early else "None.", ""]
    classes = [s for s in scores if s.classes]
    if classes:
        rows = [[s.pair, s.kind, s.seed, "; ".join(f"{r} {e}" for r, e in
                                                  sorted(s.monitor.rules.items(),
                                                         key=lambda kv: kv[1])) or "none"]
                for s in classes if s.monitor is not None]
        parts += ["## Healthy runs with class analysis (default and class rules replayed)", "",
                  markdown_table(["pair", "kind", "seed", "rules (first epoch)"], rows), ""]
    for name in dict.fromkeys(s.pair for s in scores):
        pair = PAIRS[name]
        mine = [s for s in scores if s.pair == name]
        minutes = sum(s.seconds for s in mine) / 60
        cpu = [s.cpu_seconds for s in mine if s.cpu_seconds is not None]
        cpu_text = (f" ({sum(cpu) / 60:.1f} min of CPU over the {len(cpu)} runs that record "
                    "it)" if cpu else "")
        held = " (held-out architecture)" if pair.split == HELD_OUT else ""
        source = f" Ported from {pair.source}." if pair.source else ""
        parts += [f"## {name}{held}: {pair.what}", "",
                  f"{len(mine)} runs, {pair.epochs} epochs planned (kinds may differ), "
                  f"{minutes:.1f} min of training{cpu_text}.{source}", "",
                  run_table(mine), "",
                  "README stop and checkpoint signals: `alerts/active` > 0 analyses, where "
                  "`EarlyStopping(monitor=\"alerts/active\", mode=\"min\", "
                  "divergence_threshold=0.5)` stops, which epoch `ModelCheckpoint(monitor="
                  "\"alerts/healthy_step\", mode=\"max\")` keeps.", "",
                  markdown_table(["kind", "role", "analyses with alerts/active > 0",
                                  "EarlyStopping stops at (per seed)",
                                  "ModelCheckpoint keeps epoch (acc there vs last)"],
                                 sc.stop_signal_rows(mine)), "",
                  "Kinds: " + "; ".join(f"`{k.name}` ({k.role}): {k.what}"
                                        for k in pair.kinds) + ".", ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = planned(args)
    if not args.score_only and any(p.dataset == "fashion" for p, *_ in runs):
        require_fashion_mnist(args.root)  # exits 2 with the instruction
    started = time.perf_counter()
    records, missing = collect(args)
    if missing:
        print("not cached (train them without --score-only): " + ", ".join(missing),
              file=sys.stderr)
    scores = mark_broken(score_run(r, RULE_SETS[args.rules]) for r in records)
    text = report(scores, args.rules)
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s wall, "
          f"{sum(s.seconds for s in scores) / 60:.1f} min of training", flush=True)
    if not (args.quick or args.no_results or missing or args.pairs or args.seeds
            or args.kinds):
        block = None if args.split == "all" else args.split
        if args.rules != "current":
            block = f"{block or 'all'}, rules {args.rules}"
        write_results(args.results, "Alert zoo", text, block_name=block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

