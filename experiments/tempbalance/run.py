"""TempBalance on the digits SmallCNN: the same SGD + cosine run with and without
``SpectralLRBalancer``, several seeds; the protocol is in RESULTS.md.

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 .venv/bin/python -m experiments.tempbalance.run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from experiments.common import (
    EpochRecorder,
    command_line,
    machine_line,
    markdown_table,
    trainer_for,
    write_results,
)
from svd_callback.balance import SpectralLRBalancer, compute_balance
from svd_callback.examples import DigitsDataModule, SmallCNN

FOLDER = Path(__file__).resolve().parent


class SGDCosineCNN(SmallCNN):
    """SmallCNN trained by SGD (momentum 0.9, weight decay on every parameter) with a cosine
    schedule over ``epochs`` epochs, stepped per epoch."""

    def __init__(self, epochs: int, lr: float, weight_decay: float = 5e-4, **kwargs: Any):
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        self.epochs = epochs

    def configure_optimizers(self):  # noqa: D102
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9,
                                    weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}


def run_one(arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One training run; validation accuracy after every epoch and the wall time."""
    pl.seed_everything(seed, verbose=False)
    model = SGDCosineCNN(args.epochs, args.lr, width=args.width, hidden=args.hidden)
    data = DigitsDataModule(batch_size=args.batch_size, seed=seed)
    recorder = EpochRecorder()
    callbacks: list[Any] = [recorder]
    balancer = None
    if arm == "tempbalance":
        balancer = SpectralLRBalancer(log_lrs=False)
        callbacks.insert(0, balancer)
    trainer = trainer_for(args.epochs, callbacks)
    started = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - started
    accs = recorder.series("val_acc")[1:]
    return {
        "arm": arm, "seed": seed, "final_acc": accs[-1], "best_acc": max(accs),
        "accs": accs, "seconds_per_epoch": seconds / args.epochs,
        "factors": balancer.factors if balancer else None,
    }


def fit_seconds(args: argparse.Namespace, repeats: int = 20) -> float:
    """Median wall time of one TempBalance fit (all tuned layers) of the model."""
    model = SmallCNN(width=args.width, hidden=args.hidden)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        compute_balance(model)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{100 * statistics.mean(values):.2f} +- {100 * std:.2f}"


def report(rows: list[dict[str, Any]], args: argparse.Namespace, wall: float, fit_s: float) -> str:
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["arm"], r["seed"]): r for r in rows}
    arms = ["baseline", "tempbalance"]
    summary = [
        [arm, mean_std([by[arm, s]["final_acc"] for s in seeds]),
         mean_std([by[arm, s]["best_acc"] for s in seeds]),
         f"{statistics.median(by[arm, s]['seconds_per_epoch'] for s in seeds):.3f}"]
        for arm in arms
    ]
    diffs = [by["tempbalance", s]["final_acc"] - by["baseline", s]["final_acc"] for s in seeds]
    best_diffs = [by["tempbalance", s]["best_acc"] - by["baseline", s]["best_acc"] for s in seeds]
    per_seed = [
        [s, 100 * by["baseline", s]["final_acc"], 100 * by["tempbalance", s]["final_acc"],
         100 * diffs[i], 100 * by["baseline", s]["best_acc"],
         100 * by["tempbalance", s]["best_acc"], 100 * best_diffs[i]]
        for i, s in enumerate(seeds)
    ]
    mean = statistics.mean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    positive = sum(d > 0 for d in diffs)
    helps = mean > 0 and mean > 2 * se and positive >= 4
    factors = [
        [s, *(f"{v:.3f}" for v in by["tempbalance", s]["factors"].values())] for s in seeds
    ]
    layer_names = list(by["tempbalance", seeds[0]]["factors"])
    return "\n".join([
        "## Results (computed)",
        "",
        markdown_table(["arm", "final val acc % (mean +- std)", "best val acc %",
                        "s / epoch (median of seeds)"], summary),
        "",
        "The time per epoch is the run's wall time (training and validation) over its epochs; "
        "the median over seeds, since the 2 cores are shared and a run can be slowed by "
        "other work (per-run times in runs/rows.json).",
        "",
        "Per seed (accuracy in %; diff = tempbalance - baseline):",
        "",
        markdown_table(["seed", "baseline final", "tb final", "diff", "baseline best",
                        "tb best", "diff best"], per_seed, digits=4),
        "",
        f"Paired difference of the final accuracy: {100 * mean:+.2f} points, standard error "
        f"{100 * se:.2f}, positive for {positive} of {len(diffs)} seeds. Best accuracy: "
        f"{100 * statistics.mean(best_diffs):+.2f} points.",
        "",
        f"Decision rule (protocol): helps here: **{'yes' if helps else 'no'}**.",
        "",
        f"One TempBalance fit of the model (3 layers, median of 20): {1000 * fit_s:.1f} ms; "
        "the callback fits once per epoch.",
        "",
        "Factors at the last epoch start (rate / scheduled rate):",
        "",
        markdown_table(["seed", *layer_names], factors),
        "",
        f"Command: `{command_line()}`",
        "",
        f"Wall time of this invocation: {wall:.0f} s.",
        "",
        f"Machine: {machine_line()}.",
        "",
        f"Settings: {args.epochs} epochs, SGD lr {args.lr} momentum 0.9 weight decay 5e-4, "
        f"cosine per epoch, batch {args.batch_size}, SmallCNN(width={args.width}, "
        f"hidden={args.hidden}), seeds {seeds}.",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(FOLDER / "runs"))
    parser.add_argument("--results", default=str(FOLDER / "RESULTS.md"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    # one untimed epoch first, so that neither arm's timing pays the process's warm-up
    run_one("baseline", args.seeds[0], argparse.Namespace(**{**vars(args), "epochs": 1}))
    rows = []
    for seed in args.seeds:
        for arm in ("baseline", "tempbalance"):
            row = run_one(arm, seed, args)
            print(f"seed {seed} {arm}: final {row['final_acc']:.4f} best {row['best_acc']:.4f} "
                  f"{row['seconds_per_epoch']:.3f} s/epoch", flush=True)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    fit_s = fit_seconds(args)
    text = report(rows, args, time.perf_counter() - started, fit_s)
    write_results(args.results, "tempbalance", text)
    print(text)


if __name__ == "__main__":
    main()
