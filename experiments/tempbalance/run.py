"""TempBalance on two model/data pairs: the same SGD + cosine run with and without
``SpectralLRBalancer``, several seeds; the protocol is in RESULTS.md.

- ``digits``: the SmallCNN (width 32, hidden 128) on scikit-learn's digits, SGD lr 0.05, momentum
  0.9, weight decay 5e-4, cosine over 20 epochs, batch 64.
- ``resnet``: the alert zoo's ``fashion_resnet`` pair with its ``sgd_cosine_wd`` recipe
  (BatchNorm ResNet-8 on a 30000-image Fashion-MNIST subset, the 10000 test images as
  validation, SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine over 12 epochs, batch 128).

Every run is cached as JSON under ``runs/<pair>/`` (keyed by its settings), so the report can be
rebuilt without training (``--report-only``).

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 .venv/bin/python -m experiments.tempbalance.run
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.tempbalance.run")

import argparse
import hashlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from scipy import stats
from torch import nn

from experiments.alert_zoo.zoo import RESNET, build_model
from experiments.common import (
    EpochRecorder,
    command_line,
    machine_line,
    markdown_table,
    trainer_for,
    write_results,
)
from svd_callback.balance import SpectralLRBalancer, balance_plan, compute_balance
from svd_callback.examples import DigitsDataModule, SmallCNN

FOLDER = Path(__file__).resolve().parent
ARMS = ("baseline", "tempbalance")
RESNET_KIND = "sgd_cosine_wd"
DIGITS = {"width": 32, "hidden": 128, "lr": 0.05, "weight_decay": 5e-4, "batch_size": 64}
PAIRS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 20, "seeds": (0, 1, 2, 3, 4), "split": "validation"},
    "resnet": {"epochs": RESNET.epochs, "seeds": (0, 1, 2), "split": "test"},
}


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


def make_run(pair: str, seed: int, epochs: int, data: dict[str, Any]
             ) -> tuple[pl.LightningModule, pl.LightningDataModule, float]:
    """The seeded model, data module and base learning rate of one run of ``pair``."""
    pl.seed_everything(seed, verbose=False)
    if pair == "digits":
        model = SGDCosineCNN(epochs, DIGITS["lr"], DIGITS["weight_decay"],
                             width=DIGITS["width"], hidden=DIGITS["hidden"])
        return model, DigitsDataModule(batch_size=DIGITS["batch_size"], seed=seed), DIGITS["lr"]
    if pair == "resnet":
        kind = RESNET.kind(RESNET_KIND)
        model = build_model(RESNET, kind)
        return model, RESNET.datamodule(kind, seed, **data), float(kind.model["lr"])
    raise ValueError(f"pair must be one of {sorted(PAIRS)}, got {pair!r}")


class EpochClock(Callback):
    """Wall time of each training epoch without its validation: from the epoch start (this
    callback comes first, before the balancer's refit) to the epoch end, less the validation
    loop run inside it. With :meth:`after` placed right after the balancer, also the time of
    the balancer's epoch-start refit."""

    def __init__(self) -> None:
        self.train_seconds: list[float] = []
        self.refit_seconds: list[float] = []
        self._start = self._val_start = 0.0
        self._val = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._val = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_seconds.append(time.perf_counter() - self._start - self._val)

    def after(self) -> Callback:
        """A callback recording, at the epoch start, the time since this clock's epoch start."""
        clock = self

        class _After(Callback):
            def on_train_epoch_start(self, trainer: pl.Trainer,
                                     pl_module: pl.LightningModule) -> None:
                clock.refit_seconds.append(time.perf_counter() - clock._start)

        return _After()


class RateProbe(Callback):
    """At the first optimizer step of every epoch, the learning rate each parameter trains with
    (read inside the step, where the balancer's factors are applied) and the balancer's
    factors of that epoch."""

    def __init__(self, balancer: SpectralLRBalancer | None) -> None:
        self.balancer = balancer
        self.epochs: list[dict[str, Any]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        epoch = trainer.current_epoch
        if self.epochs and self.epochs[-1]["epoch"] == epoch:
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        lrs = {names[id(p)]: float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
        factors = dict(self.balancer.factors) if self.balancer is not None else {}
        self.epochs.append({"epoch": epoch, "lrs": lrs, "factors": factors})


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """``CosineAnnealingLR`` (eta_min 0) at ``epoch``: ``base (1 + cos(pi epoch / T)) / 2``
    (Loshchilov & Hutter, SGDR, 2017, eq. 5 without restarts)."""
    return base_lr * (1 + math.cos(math.pi * epoch / epochs)) / 2


def rate_checks(model: nn.Module, probe: RateProbe, base_lr: float, epochs: int
                ) -> dict[str, Any]:
    """What the balancer did to the rates, against the plan from the model's shapes and the
    closed-form cosine schedule: the tuned layers, the untuned ones (with the reason), the
    norm layers sharing a conv's rate, and per epoch the largest relative error of every
    parameter's rate against ``cosine_lr * factor`` (factor 1 for everything not tuned)."""
    plan = balance_plan(model)
    owner = {}
    for name, module in model.named_modules():
        for pname, _ in module.named_parameters(prefix=name, recurse=False):
            owner[pname] = plan.rate_owner(name)
    per_epoch = []
    for row in probe.epochs:
        scheduled = cosine_lr(base_lr, row["epoch"], epochs)
        errors = {"tuned": 0.0, "untuned": 0.0}
        for pname, lr in row["lrs"].items():
            module = pname.rsplit(".", 1)[0]
            layer = owner[pname]
            expected = scheduled * (row["factors"].get(module, 1.0) if layer else 1.0)
            error = abs(lr - expected) / expected
            key = "tuned" if layer else "untuned"
            errors[key] = max(errors[key], error)
        shared = all(
            row["lrs"][f"{norm}.{p}"] == row["lrs"][f"{conv}.weight"]
            for norm, conv in plan.norm_of.items() for p in ("weight", "bias")
        )
        lrs = [lr for p, lr in row["lrs"].items() if owner[p]]
        per_epoch.append({
            "epoch": row["epoch"], "scheduled": scheduled,
            "tuned_min": min(lrs, default=math.nan), "tuned_max": max(lrs, default=math.nan),
            "max_rel_error_tuned": errors["tuned"], "max_rel_error_untuned": errors["untuned"],
            "norm_shares_conv_rate": shared,
        })
    return {"tuned": list(plan.tuned), "untuned": plan.untuned, "norm_of": plan.norm_of,
            "epochs": per_epoch}


def fingerprint(pair: str, arm: str, seed: int, epochs: int, data: dict[str, Any]) -> str:
    """A hash of everything that defines a run; a cached run with another one is retrained."""
    spec = {"pair": pair, "arm": arm, "seed": seed, "epochs": epochs, "data": data,
            "digits": DIGITS if pair == "digits" else None,
            "resnet": [RESNET.model, RESNET.data, RESNET.kind(RESNET_KIND).model]
            if pair == "resnet" else None}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def run_one(pair: str, arm: str, seed: int, epochs: int, data: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """One training run: accuracy on the held-out split after every epoch, the training time
    of every epoch, the balancer's refit time and factors, and the rate checks."""
    data = dict(data or {})
    model, datamodule, base_lr = make_run(pair, seed, epochs, data)
    recorder, clock = EpochRecorder(), EpochClock()
    balancer = SpectralLRBalancer(log_lrs=False) if arm == "tempbalance" else None
    probe = RateProbe(balancer)
    middle = [balancer, clock.after()] if balancer is not None else [clock.after()]
    trainer = trainer_for(epochs, [clock, *middle, recorder, probe])
    started = time.perf_counter()
    trainer.fit(model, datamodule)
    seconds = time.perf_counter() - started
    accs = recorder.series("val_acc")[1:]
    started = time.perf_counter()
    compute_balance(model)
    return {
        "pair": pair, "arm": arm, "seed": seed, "epochs": epochs, "data": data,
        "fingerprint": fingerprint(pair, arm, seed, epochs, data),
        "final_acc": accs[-1], "best_acc": max(accs), "accs": accs, "seconds": seconds,
        "train_epoch_seconds": clock.train_seconds, "refit_seconds": clock.refit_seconds,
        "fit_seconds_after_training": time.perf_counter() - started,
        "factors": balancer.factors if balancer else None,
        "checks": rate_checks(model, probe, base_lr, epochs),
        "machine": machine_line(), "command": command_line(),
    }


def cache_path(out: Path, pair: str, arm: str, seed: int) -> Path:
    return out / pair / f"{arm}_seed{seed}.json"


def cached_or_run(out: Path, pair: str, arm: str, seed: int, epochs: int,
                  data: dict[str, Any], retrain: bool, train: bool = True
                  ) -> dict[str, Any] | None:
    """The cached run if its settings match, else a new run (cached), or None with
    ``train=False``."""
    path = cache_path(out, pair, arm, seed)
    if path.exists() and not retrain:
        row = json.loads(path.read_text())
        if row.get("fingerprint") == fingerprint(pair, arm, seed, epochs, data):
            return row
    if not train:
        return None
    row = run_one(pair, arm, seed, epochs, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


# ---------------------------------------------------------------------- statistics
def mean_std(values: list[float], scale: float = 100.0) -> str:
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{scale * statistics.mean(values):.2f} +- {scale * std:.2f}"


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t confidence interval of the mean, ``mean +- t_{n-1}
    s / sqrt(n)`` (NaN bounds for a single value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = (stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values)
            / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """The protocol's reading of the 95% interval of the paired final-accuracy difference."""
    if low > 0:
        return "helps"
    if high < 0:
        return "hurts"
    return "no evidence either way"


def old_rule(diffs: list[float]) -> bool:
    """The digits-only version's rule: mean > 2 standard errors and >= 4 positive."""
    if len(diffs) < 2:
        return False
    mean = statistics.mean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean > 0 and mean > 2 * se and sum(d > 0 for d in diffs) >= 4


# ---------------------------------------------------------------------- report
def pair_report(pair: str, rows: list[dict[str, Any]]) -> str:
    """The tables of one pair: accuracies, paired differences, cost, factors, rate checks."""
    split = PAIRS[pair]["split"]
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["arm"], r["seed"]): r for r in rows}
    summary = [[arm, mean_std([by[arm, s]["final_acc"] for s in seeds]),
                mean_std([by[arm, s]["best_acc"] for s in seeds])] for arm in ARMS]
    diffs = {key: [by["tempbalance", s][key] - by["baseline", s][key] for s in seeds]
             for key in ("final_acc", "best_acc")}
    per_seed = [
        [s, *(100 * by[arm, s][key] for key in ("final_acc", "best_acc") for arm in ARMS),
         100 * diffs["final_acc"][i], 100 * diffs["best_acc"][i]]
        for i, s in enumerate(seeds)
    ]
    lines = [
        f"### {pair}",
        "",
        markdown_table(["arm", f"final {split} acc % (mean +- std)",
                        f"best {split} acc % (mean +- std)"], summary),
        "",
        f"Per seed ({split} accuracy in %, diff = tempbalance - baseline):",
        "",
        markdown_table(["seed", "baseline final", "tb final", "baseline best", "tb best",
                        "diff final", "diff best"], per_seed, digits=4),
        "",
    ]
    for key, what in (("final_acc", "final"), ("best_acc", "best")):
        mean, low, high = t_interval(diffs[key])
        positive = sum(d > 0 for d in diffs[key])
        lines.append(f"- Paired difference of the {what} accuracy: {100 * mean:+.2f} points, "
                     f"95% t-interval [{100 * low:+.2f}, {100 * high:+.2f}] "
                     f"(n = {len(seeds)}), positive for {positive} of {len(seeds)} seeds.")
    mean, low, high = t_interval(diffs["final_acc"])
    lines += ["", f"Decision rule (protocol): **{verdict(low, high)}** on this pair."]
    if pair == "digits":
        lines.append(f"Rule of the digits-only version (mean > 2 standard errors, positive for "
                     f">= 4 of 5 seeds): helps: **{'yes' if old_rule(diffs['final_acc']) else 'no'}"
                     "**.")
    lines.append("")
    lines += cost_lines(seeds, by)
    lines += factor_lines(seeds, by)
    lines += check_lines(by["tempbalance", seeds[0]]["checks"], seeds[0])
    return "\n".join(lines)


def cost_lines(seeds: list[int], by: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    """Training-epoch time (validation excluded) with / without balancing, per seed: the
    median over the run's epochs after the first (which pays the warm-up), and the minimum
    over all epochs (other work on shared cores can only add time, so the minimum is the
    least disturbed reading)."""
    table, ratios, min_ratios = [], [], []
    for s in seeds:
        times = [by[a, s]["train_epoch_seconds"] for a in ARMS]
        base, tb = (statistics.median(t[1:] or t) for t in times)
        base_min, tb_min = (min(t) for t in times)
        refit = statistics.median(by["tempbalance", s]["refit_seconds"])
        ratios.append(tb / base)
        min_ratios.append(tb_min / base_min)
        table.append([s, f"{base:.3f}", f"{tb:.3f}", f"{tb / base:.3f}", f"{base_min:.3f}",
                      f"{tb_min:.3f}", f"{tb_min / base_min:.3f}", f"{1000 * refit:.1f}",
                      f"{100 * refit / tb_min:.2f}"])
    return [
        "Cost: training time per epoch (validation excluded), both arms in the same "
        "invocation, one after the other:",
        "",
        markdown_table(["seed", "baseline s (median)", "tb s (median)", "ratio",
                        "baseline s (min)", "tb s (min)", "ratio of min", "tb refit ms",
                        "refit % of tb epoch (min)"], table),
        "",
        f"Median over seeds of the ratio of medians: {statistics.median(ratios):.3f}; of the "
        f"ratio of minima: {statistics.median(min_ratios):.3f}. The refit (median over "
        "epochs) is the balancer's epoch-start fit of every tuned layer, included in the tb "
        "epoch time; per-epoch times are in runs/<pair>/<arm>_seed<s>.json.",
        "",
    ]


def factor_lines(seeds: list[int], by: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    """The factors of the last epoch (rate / scheduled rate) of the tuned layers."""
    layers = by["tempbalance", seeds[0]]["checks"]["tuned"]
    table = [[s, *(f"{by['tempbalance', s]['factors'][n]:.3f}" for n in layers)] for s in seeds]
    return ["Factors at the last epoch start (rate / scheduled rate), tuned layers:", "",
            markdown_table(["seed", *layers], table), ""]


def check_lines(checks: dict[str, Any], seed: int) -> list[str]:
    """What the balancer did to the rates in the tempbalance run of ``seed``."""
    untuned = "; ".join(f"`{k}` ({v})" for k, v in checks["untuned"].items())
    norms = ", ".join(f"`{k}` -> `{v}`" for k, v in checks["norm_of"].items()) or "none"
    table = [[e["epoch"], f"{e['scheduled']:.5f}", f"{e['tuned_min']:.5f}",
              f"{e['tuned_max']:.5f}", f"{e['max_rel_error_untuned']:.1e}",
              f"{e['max_rel_error_tuned']:.1e}", "yes" if e["norm_shares_conv_rate"] else "NO"]
             for e in checks["epochs"]]
    return [
        f"Rates seen inside the first optimizer step of each epoch (tempbalance, seed {seed}):",
        "",
        f"- Tuned ({len(checks['tuned'])}): {', '.join(f'`{n}`' for n in checks['tuned'])}.",
        f"- Not tuned: {untuned}.",
        f"- Norm layers sharing their conv's rate: {norms}.",
        "",
        markdown_table(["epoch", "cosine lr (closed form)", "tuned lr min", "tuned lr max",
                        "max rel err untuned vs cosine", "max rel err tuned vs cosine x factor",
                        "every BN = its conv"], table),
        "",
    ]


def report(rows: list[dict[str, Any]], rebuilt: bool = False) -> str:
    """The generated part of RESULTS.md; ``rebuilt``: made from cached runs only."""
    pairs = [p for p in PAIRS if any(r["pair"] == p for r in rows)]
    machines = sorted({r["machine"] for r in rows})
    lines = ["## Results (computed)", ""]
    for pair in pairs:
        lines += [pair_report(pair, [r for r in rows if r["pair"] == pair]), ""]
    settings = sorted({(r["pair"], r["epochs"], json.dumps(r["data"], sort_keys=True))
                       for r in rows})
    commands = sorted({r.get("command", "not recorded") for r in rows})
    lines += [
        "Trained by: " + "; ".join(f"`{c}`" for c in commands) + ".",
        "",
        f"Report by: `{command_line()}`"
        + (" (from the cached runs, runs/<pair>/<arm>_seed<s>.json)" if rebuilt else "")
        + ".",
        "",
        f"Wall time of the training runs (sum of their fits): "
        f"{sum(r['seconds'] for r in rows):.0f} s.",
        "",
        "Runs: " + "; ".join(f"{p}: {e} epochs, data overrides {d}" for p, e, d in settings)
        + ".",
        "",
        "Machine: " + " / ".join(machines) + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=list(PAIRS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: 0-4 for digits, 0-2 for resnet")
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: 20 for digits, 12 for resnet")
    parser.add_argument("--train-size", type=int, default=None,
                        help="resnet training images (default: the pair's 30000)")
    parser.add_argument("--val-size", type=int, default=None,
                        help="resnet test images used (default: the pair's, all 10000)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cached runs")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from the cached runs, train nothing")
    parser.add_argument("--out", default=str(FOLDER / "runs"))
    parser.add_argument("--results", default=str(FOLDER / "RESULTS.md"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = []
    for pair in args.pairs:
        epochs = args.epochs or PAIRS[pair]["epochs"]
        data = {}
        if pair == "resnet":
            data = {k: v for k, v in (("train_size", args.train_size),
                                      ("val_size", args.val_size)) if v is not None}
        for seed in args.seeds or PAIRS[pair]["seeds"]:
            for arm in ARMS:
                row = cached_or_run(out, pair, arm, seed, epochs, data, args.retrain,
                                    train=not args.report_only)
                if row is None:
                    raise SystemExit(f"no cached run for {pair} {arm} seed {seed} with these "
                                     f"settings under {out}; run without --report-only")
                print(f"{pair} seed {seed} {arm}: final {row['final_acc']:.4f} best "
                      f"{row['best_acc']:.4f} {statistics.median(row['train_epoch_seconds']):.3f}"
                      " s/train epoch", flush=True)
                rows.append(row)
    text = report(rows, rebuilt=args.report_only)
    write_results(args.results, "tempbalance", text)
    print(text)


if __name__ == "__main__":
    main()
