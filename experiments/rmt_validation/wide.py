"""A wide ReLU MLP on the alert zoo's Fashion-MNIST data, for spectra of 512 eigenvalues.

``WideMLP`` is 784-512-512-10 (``fc1``, ``fc2``, ``head``), trained with the ``fashion_resnet``
pair's healthy recipe (SGD momentum 0.9, lr 0.05, weight decay 5e-4, cosine, batch 128, 12
epochs, 30000 class-stratified training images, the 10000 test images held out), seeded as the
pair's runs (``pl.seed_everything(seed, workers=True)``, then the data module, then the model).
The initial and final state dicts and the per-epoch test accuracy are cached under
``experiments/runs/wide_mlp/`` (git-ignored). ``python -m experiments.rmt_validation.wide``
trains the missing seeds (about a minute each on one thread).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.rmt_validation.wide")

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from experiments.alert_zoo.zoo import RESNET
from experiments.common import EXPERIMENTS, EpochRecorder, machine_line, trainer_for
from experiments.data_check import require_fashion_mnist
from experiments.resnet_checkpoints import SaveStates
from svd_callback.examples.data import FASHION_MNIST_ROOT
from svd_callback.examples.models import Classifier

CACHE = EXPERIMENTS / "runs" / "wide_mlp"
RECIPE = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05, "weight_decay": 5e-4,
          "schedule": "cosine"}
EPOCHS = RESNET.epochs


class WideMLP(Classifier):
    """784-512-512-10 ReLU MLP (``fc1``, ``fc2``, ``head``) with the recipe of ``hparams``."""

    def __init__(self, width: int = 512, lr: float = 0.05, weight_decay: float = 5e-4,
                 optimizer: str = "sgd", momentum: float = 0.9, schedule: str = "cosine"):
        super().__init__()
        self.save_hyperparameters()
        self._check_recipe()
        self.fc1 = nn.Linear(28 * 28, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.head(torch.relu(self.fc2(h)))


@dataclass
class MLPRun:
    """Initial (0) and final state dicts, per-epoch test accuracy rows, training seconds."""

    seed: int
    states: dict[int, dict[str, torch.Tensor]]
    epochs: list[dict[str, float]]
    seconds: float
    machine: str

    @property
    def final_accuracy(self) -> float:
        return float(self.epochs[-1]["val_acc"])

    def model(self, epoch: int) -> WideMLP:
        model = WideMLP(**RECIPE)
        model.load_state_dict(self.states[epoch])
        return model.eval()


def fingerprint(seed: int) -> str:
    spec = {"model": "WideMLP 784-512-512-10", "recipe": RECIPE, "data": RESNET.data,
            "epochs": EPOCHS, "seed": seed}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def trained_mlp(seed: int, *, root: str = FASHION_MNIST_ROOT, cache: Path = CACHE) -> MLPRun:
    """The run of ``seed`` from the cache, or trained and cached."""
    path = cache / f"wide_mlp_seed{seed}.pt"
    if path.exists():
        record = torch.load(path, map_location="cpu", weights_only=True)
        if record.get("fingerprint") == fingerprint(seed):
            return MLPRun(seed, {int(k): v for k, v in record["states"].items()},
                          record["epochs"], record["seconds"], record["machine"])
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = RESNET.datamodule(RESNET.kind("sgd_cosine_wd"), seed, root=root)
    model = WideMLP(**RECIPE)
    recorder, saver = EpochRecorder(), SaveStates()
    started = time.perf_counter()
    trainer_for(EPOCHS, [recorder, saver]).fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - started
    states = {k: v for k, v in saver.states.items() if k in (0, EPOCHS)}
    record = {"fingerprint": fingerprint(seed), "states": states, "epochs": recorder.rows,
              "seconds": seconds, "machine": machine_line()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)
    return MLPRun(seed, states, recorder.rows, seconds, record["machine"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=FASHION_MNIST_ROOT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    require_fashion_mnist(args.root)
    for seed in args.seeds:
        run = trained_mlp(seed, root=args.root)
        print(f"wide MLP seed {seed}: test accuracy {run.final_accuracy:.4f} "
              f"({run.seconds:.0f} s; {run.machine})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
