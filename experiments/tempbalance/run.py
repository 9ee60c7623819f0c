"""TempBalance on two model/data pairs: the same SGD + cosine run with and without
``SpectralLRBalancer``, and two global learning-rate controls (the whole network at the
balanced arm's mean factor m_s, and at 2 - m_s), several seeds; the protocol is in RESULTS.md.

- ``digits``: the SmallCNN (width 32, hidden 128) on scikit-learn's digits, SGD lr 0.05, momentum
  0.9, weight decay 5e-4, cosine over 20 epochs, batch 64.
- ``resnet``: the alert zoo's ``fashion_resnet`` pair with its ``sgd_cosine_wd`` recipe
  (BatchNorm ResNet-8 on a 30000-image Fashion-MNIST subset, the 10000 test images as
  validation, SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine over 12 epochs, batch 128).

Every run is cached as JSON under ``runs/<pair>/`` (keyed by its settings). The ResNet's
baseline arm is the healthy run of ``experiments.resnet_checkpoints`` (the same recipe, seed,
initial weights and batches). The compact per-run data go to ``derived/runs.json``, from which
``experiments.tempbalance.tables`` rebuilds the tables of RESULTS.md.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.tempbalance.run
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from experiments.alert_zoo.zoo import RESNET, build_model
from experiments.common import EpochRecorder, machine_line, trainer_for
from experiments.derived import write_json
from svd_callback.balance import SpectralLRBalancer, balance_plan, compute_balance
from svd_callback.examples import DigitsDataModule, SmallCNN

FOLDER = Path(__file__).resolve().parent
ARMS = ("baseline", "tempbalance", "global_m", "global_hi")
CONTROLS = ("global_m", "global_hi")
DERIVED = FOLDER / "derived"
COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python -m experiments.tempbalance.run"
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


def make_run(pair: str, seed: int, epochs: int, data: dict[str, Any], lr_factor: float = 1.0
             ) -> tuple[pl.LightningModule, pl.LightningDataModule, float]:
    """The seeded model, data module and base learning rate of one run of ``pair``, the base
    rate of every parameter multiplied by ``lr_factor`` (the global learning-rate controls)."""
    pl.seed_everything(seed, verbose=False)
    if pair == "digits":
        lr = DIGITS["lr"] * lr_factor
        model = SGDCosineCNN(epochs, lr, DIGITS["weight_decay"],
                             width=DIGITS["width"], hidden=DIGITS["hidden"])
        return model, DigitsDataModule(batch_size=DIGITS["batch_size"], seed=seed), lr
    if pair == "resnet":
        kind = RESNET.kind(RESNET_KIND)
        lr = float(kind.model["lr"]) * lr_factor
        if lr_factor != 1.0:
            kind = replace(kind, model={**kind.model, "lr": lr})
        model = build_model(RESNET, kind)
        return model, RESNET.datamodule(kind, seed, **data), lr
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


def mean_factor(row: dict[str, Any]) -> float:
    """m_s: the mean over the epochs of a tempbalance run and over its tuned layers of the
    factor (rate / scheduled rate) read inside the first optimizer step of each epoch (a
    BatchNorm sharing its conv's rate is not counted again)."""
    tuned = row["checks"]["tuned"]
    return statistics.fmean(e["factors"][n] for e in row["factor_epochs"] for n in tuned)


def fingerprint(pair: str, arm: str, seed: int, epochs: int, data: dict[str, Any],
                lr_factor: float = 1.0) -> str:
    """A hash of everything that defines a run; a cached run with another one is retrained."""
    spec = {"pair": pair, "arm": arm, "seed": seed, "epochs": epochs, "data": data,
            "digits": DIGITS if pair == "digits" else None,
            "resnet": [RESNET.model, RESNET.data, RESNET.kind(RESNET_KIND).model]
            if pair == "resnet" else None}
    if lr_factor != 1.0:
        spec["lr_factor"] = lr_factor
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def run_one(pair: str, arm: str, seed: int, epochs: int, data: dict[str, Any] | None = None,
            lr_factor: float = 1.0) -> dict[str, Any]:
    """One training run: accuracy on the held-out split after every epoch, the training time
    of every epoch, the balancer's refit time and factors (final and per epoch), and the rate
    checks."""
    data = dict(data or {})
    model, datamodule, base_lr = make_run(pair, seed, epochs, data, lr_factor)
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
        "fingerprint": fingerprint(pair, arm, seed, epochs, data, lr_factor),
        "lr_factor": lr_factor,
        "final_acc": accs[-1], "best_acc": max(accs), "accs": accs, "seconds": seconds,
        "train_epoch_seconds": clock.train_seconds, "refit_seconds": clock.refit_seconds,
        "fit_seconds_after_training": time.perf_counter() - started,
        "factors": balancer.factors if balancer else None,
        "factor_epochs": [{"epoch": e["epoch"], "factors": e["factors"]} for e in probe.epochs]
        if balancer else None,
        "checks": rate_checks(model, probe, base_lr, epochs),
        "machine": machine_line(), "command": COMMAND,
    }


def cache_path(out: Path, pair: str, arm: str, seed: int) -> Path:
    return out / pair / f"{arm}_seed{seed}.json"


def cached_or_run(out: Path, pair: str, arm: str, seed: int, epochs: int,
                  data: dict[str, Any], retrain: bool, train: bool = True,
                  lr_factor: float = 1.0) -> dict[str, Any] | None:
    """The cached run if its settings match, else a new run (cached), or None with
    ``train=False``."""
    path = cache_path(out, pair, arm, seed)
    if path.exists() and not retrain:
        row = json.loads(path.read_text())
        if row.get("fingerprint") == fingerprint(pair, arm, seed, epochs, data, lr_factor):
            return row
    if not train:
        return None
    row = run_one(pair, arm, seed, epochs, data, lr_factor)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


def checkpoint_baseline(seed: int, epochs: int, data: dict[str, Any]) -> dict[str, Any]:
    """The ResNet baseline arm of ``seed``: the healthy run of
    :mod:`experiments.resnet_checkpoints` (same recipe, seed, initial weights and batches;
    trained there once), in the shape of a :func:`run_one` row without timing or checks."""
    from experiments.resnet_checkpoints import trained_run

    if data or epochs != RESNET.epochs:
        raise ValueError("the cached baseline has the pair's own data and epochs only")
    run = trained_run(seed)
    accs = [float(e["val_acc"]) for e in run.epochs[1:]]
    return {"pair": "resnet", "arm": "baseline", "seed": seed, "epochs": epochs, "data": {},
            "lr_factor": 1.0, "final_acc": accs[-1], "best_acc": max(accs), "accs": accs,
            "seconds": run.seconds, "train_epoch_seconds": None, "refit_seconds": None,
            "factors": None, "factor_epochs": None, "checks": None, "machine": run.machine,
            "command": "OMP_NUM_THREADS=1 .venv/bin/python -m experiments.resnet_checkpoints"}


DERIVED_KEYS = ("pair", "arm", "seed", "epochs", "data", "lr_factor", "final_acc", "best_acc",
                "accs", "seconds", "train_epoch_seconds", "refit_seconds", "factors",
                "factor_epochs", "checks", "machine", "command")


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
    parser.add_argument("--out", default=str(FOLDER / "runs"))
    parser.add_argument("--derived", default=str(DERIVED))
    parser.add_argument("--results", default=str(FOLDER / "RESULTS.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    rows = []
    for pair in args.pairs:
        epochs = args.epochs or PAIRS[pair]["epochs"]
        data = {}
        if pair == "resnet":
            data = {k: v for k, v in (("train_size", args.train_size),
                                      ("val_size", args.val_size)) if v is not None}
        for seed in args.seeds or PAIRS[pair]["seeds"]:
            if pair == "resnet" and not data and epochs == RESNET.epochs:
                seed_rows = [checkpoint_baseline(seed, epochs, data)]
            else:
                seed_rows = [cached_or_run(out, pair, "baseline", seed, epochs, data,
                                           args.retrain)]
            balanced = cached_or_run(out, pair, "tempbalance", seed, epochs, data, args.retrain)
            m = mean_factor(balanced)
            seed_rows += [balanced,
                          cached_or_run(out, pair, "global_m", seed, epochs, data, args.retrain,
                                        lr_factor=m),
                          cached_or_run(out, pair, "global_hi", seed, epochs, data,
                                        args.retrain, lr_factor=2.0 - m)]
            for row in seed_rows:
                print(f"{pair} seed {seed} {row['arm']} (lr x {row['lr_factor']:.4f}): final "
                      f"{row['final_acc']:.4f} best {row['best_acc']:.4f}", flush=True)
            rows += seed_rows
    write_json(Path(args.derived) / "runs.json",
               [{k: row.get(k) for k in DERIVED_KEYS} for row in rows])
    from experiments.tempbalance import tables

    tables.main(["--derived", args.derived, "--results", args.results])


if __name__ == "__main__":
    main()
