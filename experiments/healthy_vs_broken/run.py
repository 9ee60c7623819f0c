"""Healthy vs broken runs: do the callback's alerts fire before the validation loss turns?

A matrix of runs of the same SmallCNN from the same seeded init, one healthy (a good learning
rate) and several broken ones (learning rate 10x / 100x too high, 50% / 100% random labels, a
tiny training subset, a frozen layer), each trained with :class:`~svd_callback.SpectralMonitor`
(unfold mode, every metric group, alerts logged but never stopping the run, so that the whole
validation-loss curve is seen). Per run and epoch: validation loss and accuracy, and the alerts
(rule, layer, epoch). The alerts are then replayed from each run's ``spectral_history.jsonl``
under two rule sets: the library's ``default_rules()`` (the replay is checked to reproduce the
alerts the callback raised online) and this experiment's rule set (``rules.py``).

The validation-loss turn T of a run is the first epoch k after which the validation loss rises
and is not brought back below its value within 3 epochs (Lightning's ``EarlyStopping`` default
patience; see ``common.val_loss_turn``): k = 0 is the initial weights, so T = 0 when the first
three epochs did not lower the loss; NaN counts as +inf; no such epoch: censored, "none". The
naive first rise (first k with loss[k+1] > loss[k]) and the best epoch are reported beside it.
An alert at epoch a (the analysis after a epochs) is *in time* when a <= T + 1: before the turn
or within one epoch of it (a = T + 1 is the analysis made when the rise first shows).

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 .venv/bin/python \
        -m experiments.healthy_vs_broken.run --config configs/experiments/healthy_vs_broken.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from experiments.arguments import experiment_parser, parse_with_config, require_data
from experiments.common import (
    EpochRecorder,
    PartlyFrozenCNN,
    command_line,
    first_rise,
    history_analyses,
    image_size_of,
    machine_line,
    make_datamodule,
    markdown_table,
    replay_alerts,
    trainer_for,
    val_loss_turn,
    write_results,
)
from experiments.healthy_vs_broken.rules import RULE_SET_NOTES, experiment_rules
from svd_callback.alerts import default_rules
from svd_callback.callback import SpectralMonitor
from svd_callback.sinks.history import HISTORY_FILENAME, read_history

HERE = Path(__file__).resolve().parent

RULE_SETS: dict[str, Callable[[], list[Any]]] = {
    "default": default_rules,
    "experiment": experiment_rules,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(__doc__.splitlines()[0], HERE, dataset="digits", train_size=4000,
                               val_size=1000, epochs=15, width=16, hidden=64, batch_size=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--looked-at", type=int, nargs="+", default=None,
                        help="seeds whose results informed rule choices (default: the first)")
    parser.add_argument("--only", nargs="+", default=None, help="train only these runs")
    parser.add_argument("--skip-training", action="store_true",
                        help="re-evaluate the histories already in --out")
    parser.add_argument("--compare-out", default=str(HERE / "compare"))
    args, config = parse_with_config(parser, argv, extra=("runs", "healthy", "compare"))
    args.runs = config.get("runs", {"good": {}})
    args.healthy = config.get("healthy", ["good"])
    args.compare = config.get("compare", [])
    return args if args.skip_training else require_data(args)


# ---------------------------------------------------------------------- training
def run_dir(args: argparse.Namespace, seed: int, name: str) -> Path:
    return Path(args.out) / f"seed_{seed}" / name


def train(args: argparse.Namespace, seed: int, name: str, overrides: dict[str, Any]) -> dict:
    """One run of the matrix; returns its record (also written to ``epochs.json``)."""
    directory = run_dir(args, seed, name)
    shutil.rmtree(directory, ignore_errors=True)  # the history file appends
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = make_datamodule(
        args.dataset, args.root, overrides.get("batch_size", args.batch_size), args.train_size,
        args.val_size, seed,
        limit=overrides.get("limit"), label_noise=overrides.get("label_noise", 0.0),
    )
    model = PartlyFrozenCNN(
        frozen=overrides.get("frozen", ()), width=args.width, hidden=args.hidden,
        image_size=image_size_of(args.dataset), lr=overrides.get("lr", args.lr),
    )
    monitor = SpectralMonitor(
        conv_mode=("unfold",), metrics="all", alert_rules=default_rules(),
        stop_on_alert=False, figures_every_n=0, histograms=False,
    )
    recorder = EpochRecorder()
    logger = TensorBoardLogger(save_dir=str(directory.parent), name=name, version="")
    trainer = trainer_for(args.epochs, [monitor, recorder], logger=logger)
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    record = {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "seconds": time.perf_counter() - started,
        "epochs": recorder.rows,
        "online_alerts": [a.to_dict() for a in monitor.alert_engine.alerts_so_far],
        "log_dir": logger.log_dir,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "epochs.json").write_text(json.dumps(record, indent=1, default=_json_default))
    return record


def _json_default(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def load_run(args: argparse.Namespace, seed: int, name: str) -> dict:
    directory = run_dir(args, seed, name)
    record = json.loads((directory / "epochs.json").read_text())
    for row in record["epochs"]:
        for key, value in row.items():
            if value is None:
                row[key] = math.nan
    history = next(iter(sorted(directory.rglob(HISTORY_FILENAME))), None)
    if history is None:
        raise FileNotFoundError(f"no {HISTORY_FILENAME} under {directory}")
    record["analyses"] = history_analyses(read_history(history))
    return record


# ---------------------------------------------------------------------- evaluation
def first_alerts(alerts: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """rule -> {"epoch": first epoch it fired, "layers": layers at that epoch, "stop": bool,
    "count": number of alerts}."""
    out: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        entry = out.setdefault(alert.rule, {"epoch": alert.epoch, "layers": [], "stop": False,
                                            "count": 0})
        entry["count"] += 1
        entry["stop"] = entry["stop"] or alert.severity == "stop"
        if alert.epoch < entry["epoch"]:
            entry["epoch"], entry["layers"] = alert.epoch, []
        if alert.epoch == entry["epoch"]:
            entry["layers"].append(alert.layer or "model")
    return out


def in_time(epoch: int | None, turn: int | None) -> bool:
    return epoch is not None and (turn is None or epoch <= turn + 1)


def evaluate(runs: dict[str, dict], healthy: Sequence[str], rule_set: str) -> dict[str, Any]:
    """Replay ``rule_set`` on every run; per-run and per-rule results."""
    per_run: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        alerts = replay_alerts(run["analyses"], RULE_SETS[rule_set]())
        turn, how = val_loss_turn([row["val_loss"] for row in run["epochs"]])
        firsts = first_alerts(alerts)
        earliest = min((f["epoch"] for f in firsts.values()), default=None)
        stops = [a for a in alerts if a.severity == "stop"]
        per_run[name] = {
            "alerts": alerts, "turn": turn, "turn_how": how, "firsts": firsts,
            "earliest": earliest, "healthy": name in healthy,
            "first_stop": min((a.epoch for a in stops), default=None),
        }
    rules = sorted({rule for r in per_run.values() for rule in r["firsts"]})
    per_rule = {}
    broken = [n for n, r in per_run.items() if not r["healthy"]]
    for rule in rules:
        fired = {n: r["firsts"][rule]["epoch"] for n, r in per_run.items() if rule in r["firsts"]}
        tp_any = [n for n in fired if n in broken]
        tp_time = [n for n in tp_any if in_time(fired[n], per_run[n]["turn"])]
        fp = [n for n in fired if n not in broken]
        per_rule[rule] = {
            "fired": fired,
            "stop": any(r["firsts"].get(rule, {}).get("stop", False) for r in per_run.values()),
            "precision": len(tp_any) / len(fired) if fired else math.nan,
            "recall_any": len(tp_any) / len(broken) if broken else math.nan,
            "recall_in_time": len(tp_time) / len(broken) if broken else math.nan,
            "false_positives": fp,
            "leads": {n: _lead(per_run[n]["turn"], fired[n]) for n in tp_any},
        }
    criteria = {
        "broken_in_time": {n: in_time(per_run[n]["earliest"], per_run[n]["turn"])
                           for n in broken},
        "healthy_no_stop": {n: per_run[n]["first_stop"] is None
                            for n in per_run if per_run[n]["healthy"]},
    }
    return {"per_run": per_run, "per_rule": per_rule, "criteria": criteria}


def _lead(turn: int | None, epoch: int) -> str:
    """Turn minus the alert epoch (positive: the alert came first); 'no turn' when the run's
    validation loss never rose (censored)."""
    return f"{turn - epoch:+d}" if turn is not None else "no turn"


def same_alerts(online: Sequence[dict], replayed: Sequence[Any]) -> bool:
    key = lambda a: (a["rule"], a["layer"], a["epoch"], a["severity"])  # noqa: E731
    return sorted(map(key, online)) == sorted(key(a.to_dict()) for a in replayed)


# ---------------------------------------------------------------------- report
def run_table(runs: dict[str, dict], results: dict[str, dict[str, Any]]) -> str:
    """One row per run and epoch: val loss/acc and the alerts of each rule set at that epoch."""
    header = ["run", "epoch", "val loss", "val acc", "train loss", "default-rule alerts",
              "experiment-rule alerts"]
    rows = []
    for name, run in runs.items():
        for row in run["epochs"]:
            k = row["epoch"]
            cells = []
            for rule_set in ("default", "experiment"):
                alerts = [a for a in results[rule_set]["per_run"][name]["alerts"] if a.epoch == k]
                cells.append(_alert_cell(alerts))
            rows.append([name, k, row["val_loss"], row["val_acc"], row["train_loss"], *cells])
    return markdown_table(header, rows, digits=4)


def _alert_cell(alerts: Sequence[Any]) -> str:
    if not alerts:
        return ""
    grouped: dict[tuple[str, str], list[str]] = {}
    for alert in alerts:
        grouped.setdefault((alert.rule, alert.severity), []).append(alert.layer or "model")
    return "; ".join(
        f"{rule}{' [STOP]' if severity == 'stop' else ''}: {', '.join(layers)}"
        for (rule, severity), layers in grouped.items()
    )


def summary_table(runs: dict[str, dict], result: dict[str, Any]) -> str:
    header = ["run", "healthy", "val-loss turn T", "first rise", "best epoch", "earliest alert",
              "in time", "first stop alert", "rules fired (first epoch)"]
    rows = []
    for name, run in runs.items():
        r = result["per_run"][name]
        losses = [row["val_loss"] for row in run["epochs"]]
        finite = [(v, k) for k, v in enumerate(losses) if math.isfinite(v)]
        best = min(finite)[1] if finite else None
        fired = ", ".join(f"{rule} ({f['epoch']})" for rule, f in
                          sorted(r["firsts"].items(), key=lambda item: item[1]["epoch"]))
        rows.append([name, r["healthy"], "none (censored)" if r["turn"] is None else r["turn"],
                     first_rise(losses), best, r["earliest"],
                     "-" if r["healthy"] else in_time(r["earliest"], r["turn"]),
                     r["first_stop"], fired or "-"])
    return markdown_table(header, rows)


def rule_table(result: dict[str, Any]) -> str:
    header = ["rule", "stops", "fired on (first epoch)", "precision", "recall (any time)",
              "recall (in time)", "lead vs turn (T - epoch)"]
    rows = []
    for rule, r in result["per_rule"].items():
        fired = ", ".join(f"{n} ({e})" for n, e in r["fired"].items())
        leads = ", ".join(f"{n} {lead}" for n, lead in r["leads"].items())
        rows.append([rule, r["stop"], fired, r["precision"], r["recall_any"],
                     r["recall_in_time"], leads or "-"])
    return markdown_table(header, rows, digits=2)


def criteria_lines(result: dict[str, Any]) -> list[str]:
    broken, healthy = result["criteria"]["broken_in_time"], result["criteria"]["healthy_no_stop"]
    missed = [n for n, ok in broken.items() if not ok]
    stopped = [n for n, ok in healthy.items() if not ok]
    return [
        f"- every broken run has an alert in time: **{'yes' if not missed else 'no'}**"
        + (f" (missed: {', '.join(missed)})" if missed else f" ({len(broken)}/{len(broken)})"),
        f"- no stopping alert on the healthy run(s): **{'yes' if not stopped else 'no'}**"
        + (f" (stopped: {', '.join(stopped)})" if stopped else ""),
    ]


def run_compare(args: argparse.Namespace, seed: int) -> str:
    """``svd-callback compare`` on the configured pair of runs; its printed output."""
    if len(args.compare) < 2:
        return ""
    exe = Path(sys.executable).with_name("svd-callback")
    dirs = [str(run_dir(args, seed, name).relative_to(Path.cwd()))
            if run_dir(args, seed, name).is_relative_to(Path.cwd())
            else str(run_dir(args, seed, name)) for name in args.compare]
    out = Path(args.compare_out)
    out_text = str(out.relative_to(Path.cwd())) if out.is_relative_to(Path.cwd()) else str(out)
    command = [str(exe), "compare", *dirs, "--out", out_text]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    shown = " ".join([".venv/bin/svd-callback", *command[1:]])
    return f"$ {shown}\n(exit status {done.returncode})\n{done.stdout}{done.stderr}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    names = [n for n in args.runs if not args.only or n in args.only]
    train_seconds: dict[tuple[int, str], float] = {}
    if not args.skip_training:
        for seed in args.seeds:
            for name in names:
                record = train(args, seed, name, dict(args.runs[name]))
                train_seconds[(seed, name)] = record["seconds"]
                print(f"seed {seed} {name}: {record['seconds']:.1f} s", flush=True)

    sections = [
        f"Command: `{command_line()}`",
        "",
        f"Machine: {machine_line()}.",
        "",
        f"Data: {args.dataset}; SmallCNN(width={args.width}, hidden={args.hidden}), Adam, "
        f"batch {args.batch_size}, {args.epochs} epochs, healthy lr {args.lr}. Runs: "
        + "; ".join(f"`{n}` {args.runs[n] or '(healthy baseline)'}" for n in names)
        + ". SpectralMonitor: unfold mode, metrics norms + powerlaw + mp + traps, analyses at "
        "init and after every epoch, alerts logged (stop_on_alert=False).",
        "",
        RULE_SET_NOTES,
    ]
    verdicts = []
    looked_at = args.looked_at if args.looked_at is not None else args.seeds[:1]
    for seed in args.seeds:
        runs = {name: load_run(args, seed, name) for name in names}
        results = {rule_set: evaluate(runs, args.healthy, rule_set) for rule_set in RULE_SETS}
        replay_ok = all(
            same_alerts(run["online_alerts"], results["default"]["per_run"][name]["alerts"])
            for name, run in runs.items()
        )
        seconds = [run["seconds"] for run in runs.values()]
        sections += [
            "",
            f"## Seed {seed}" + (" (rules looked at on this seed)" if seed in looked_at
                                 else " (held out: rules fixed before this seed was run)"),
            "",
            f"Training time per run {min(seconds):.0f}-{max(seconds):.0f} s "
            f"(total {sum(seconds):.0f} s). Replaying the history with `default_rules()` "
            f"reproduces the alerts raised online by the callback: "
            f"**{'yes' if replay_ok else 'NO'}**.",
        ]
        for rule_set in RULE_SETS:
            result = results[rule_set]
            lines = criteria_lines(result)
            verdicts.append(f"seed {seed}, {rule_set} rules: " + "; ".join(
                line.removeprefix("- ") for line in lines))
            sections += [
                "",
                f"### Seed {seed}: `{rule_set}` rule set",
                "",
                *lines,
                "",
                summary_table(runs, result),
                "",
                rule_table(result),
            ]
        sections += ["", f"### Seed {seed}: per-epoch validation loss and alerts", "",
                     run_table(runs, results)]
    compare_text = run_compare(args, args.seeds[0])
    if compare_text:
        sections += ["", "## `svd-callback compare` "
                     f"({' vs '.join(args.compare)}, seed {args.seeds[0]})", "", "```",
                     compare_text.strip(), "```"]
    elapsed = time.perf_counter() - started
    sections.insert(2, f"Wall time of this invocation: {elapsed:.0f} s.\n")
    sections.insert(0, "### Verdicts (computed)\n\n" + "\n".join(f"- {v}" for v in verdicts)
                    + "\n")
    generated = "\n".join(sections)
    path = write_results(args.results, "healthy_vs_broken: do spectral alerts fire before the "
                         "validation loss turns?", generated)
    print(generated)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
