"""Trained BatchNorm ResNets on Fashion-MNIST shared by the paper-scale experiments.

The alert zoo's pair ``fashion_resnet`` (ResNet-8 width 16, 30000 training images, the 10000
test images as validation, 12 epochs) is trained once per (recipe, seed, width), seeded as the
zoo's ``train_run`` does (``pl.seed_everything(seed, workers=True)``, then the data module, then
the model), without the spectral monitor: the healthy recipe ``sgd_cosine_wd`` by default, or
any other kind of the pair (``labels_100``: every training label random; ``lr_tiny``: a learning
rate far too low), optionally at another width (``width=32``: stage 3 has 128 channels). The
state dict after every epoch k = 0 (initial weights) .. 12 and the test accuracy/loss per epoch
are cached under ``experiments/runs/resnet_checkpoints/`` (git-ignored) and reused when the run
definition has not changed. ``python -m experiments.resnet_checkpoints`` trains the missing runs.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.resnet_checkpoints")

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from experiments.alert_zoo.zoo import RESNET, Kind, build_model
from experiments.common import EXPERIMENTS, EpochRecorder, machine_line, trainer_for
from experiments.data_check import require_fashion_mnist
from svd_callback.examples.data import FASHION_MNIST_ROOT

CACHE = EXPERIMENTS / "runs" / "resnet_checkpoints"
KIND = "sgd_cosine_wd"
SEEDS = (0, 1, 2)


@dataclass
class TrainedRun:
    """One cached run: ``states[k]`` is the state dict after k epochs (k = 0: initial weights),
    ``epochs`` the :class:`~experiments.common.EpochRecorder` rows (``val_acc`` is the accuracy
    on the 10000 test images)."""

    seed: int
    states: dict[int, dict[str, torch.Tensor]]
    epochs: list[dict[str, float]]
    seconds: float
    machine: str
    kind: str = KIND
    width: int = 16

    @property
    def final_epoch(self) -> int:
        return max(self.states)

    @property
    def middle_epoch(self) -> int:
        return self.final_epoch // 2

    @property
    def final_accuracy(self) -> float:
        return float(self.epochs[-1]["val_acc"])

    def model(self, epoch: int | None = None) -> torch.nn.Module:
        """A fresh ResNet of the recipe holding the weights after ``epoch`` (default: final),
        in eval mode."""
        model = build_model(RESNET, run_kind(self.kind, self.width))
        model.load_state_dict(self.states[self.final_epoch if epoch is None else epoch])
        return model.eval()


class SaveStates(Callback):
    """Copies the model's state dict at ``on_train_start`` (epoch 0) and after every training
    epoch (epoch k = after k epochs, the numbering of the spectral monitor)."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def _save(self, epoch: int, module: pl.LightningModule) -> None:
        self.states[epoch] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(0, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer.current_epoch + 1, pl_module)


def run_kind(kind: str = KIND, width: int = 16) -> Kind:
    """The pair's recipe ``kind``, at ``width`` channels in the first stage (the pair's 16 when
    unchanged)."""
    recipe = RESNET.kind(kind)
    if width == RESNET.model["width"]:
        return recipe
    return replace(recipe, name=f"{recipe.name}_w{width}", model={**recipe.model, "width": width})


def fingerprint(seed: int, kind: str = KIND, width: int = 16) -> str:
    """A hash of the run definition (pair, recipe, seed); a cache made for another is retrained.
    The data folder is not part of it (the same files may live elsewhere)."""
    spec = {"pair": RESNET.name, "model": RESNET.model, "data": RESNET.data,
            "epochs": RESNET.epochs, "kind": asdict(run_kind(kind, width)), "seed": seed}
    if width == RESNET.model["width"]:
        spec["kind"] = asdict(RESNET.kind(kind))
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(seed: int, cache: Path = CACHE, kind: str = KIND, width: int = 16) -> Path:
    return cache / f"{RESNET.name}_{run_kind(kind, width).name}_seed{seed}.pt"


def trained_run(seed: int, *, kind: str = KIND, width: int = 16, root: str = FASHION_MNIST_ROOT,
                cache: Path = CACHE, retrain: bool = False) -> TrainedRun:
    """The run of (``kind``, ``seed``, ``width``), loaded from the cache or trained (ResNet-8
    width 16: about 60 s on 2 CPU threads, 150 s on one)."""
    path = cache_path(seed, cache, kind, width)
    key = fingerprint(seed, kind, width)
    if path.exists() and not retrain:
        record = torch.load(path, map_location="cpu", weights_only=True)
        if record.get("fingerprint") == key:
            return TrainedRun(seed, {int(k): v for k, v in record["states"].items()},
                              record["epochs"], record["seconds"], record["machine"], kind,
                              width)
    recipe = run_kind(kind, width)
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = RESNET.datamodule(recipe, seed, root=root)
    model = build_model(RESNET, recipe)
    recorder, saver = EpochRecorder(), SaveStates()
    trainer = trainer_for(RESNET.epochs, [recorder, saver])
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - started
    record: dict[str, Any] = {"fingerprint": key, "states": saver.states,
                              "epochs": recorder.rows, "seconds": seconds,
                              "machine": machine_line()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)
    return TrainedRun(seed, saver.states, recorder.rows, seconds, record["machine"], kind, width)


def trained_runs(seeds: Sequence[int] = SEEDS, *, kind: str = KIND, width: int = 16,
                 root: str = FASHION_MNIST_ROOT, cache: Path = CACHE) -> list[TrainedRun]:
    return [trained_run(seed, kind=kind, width=width, root=root, cache=cache) for seed in seeds]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=FASHION_MNIST_ROOT,
                        help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--kind", default=KIND, choices=[k.name for k in RESNET.kinds],
                        help="recipe of the fashion_resnet pair")
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--cache", default=str(CACHE))
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args(argv)
    require_fashion_mnist(args.root)
    for seed in args.seeds:
        run = trained_run(seed, kind=args.kind, width=args.width, root=args.root,
                          cache=Path(args.cache), retrain=args.retrain)
        accs = " ".join(f"{row['val_acc']:.4f}" for row in run.epochs)
        print(f"{args.kind} width {args.width} seed {seed}: test accuracy per epoch {accs} "
              f"({run.seconds:.0f} s; {run.machine})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
