"""Alert probe: healthy recipes on library architectures (torchvision's ResNet-18 and
MobileNetV3-small, PyTorch's TransformerEncoder and GRU) that no alert default was tuned on,
trained with the current defaults; which warnings fire, and on which runs?

    .venv/bin/python -m experiments.alert_probe.run [--seeds 0 1] [--epochs 6]

Fashion-MNIST from local files (a 4000-image class-stratified training subset, 1000 test
images as validation, batch 128); writes experiments/alert_probe/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

from experiments.alert_probe.models import ARCHITECTURES
from experiments.common import (
    command_line,
    machine_line,
    markdown_table,
    trainer_for,
    write_results,
)
from experiments.data_check import require_fashion_mnist
from svd_callback.callback import SpectralMonitor
from svd_callback.examples import FashionMNISTDataModule
from svd_callback.examples.data import FASHION_MNIST_ROOT

HERE = Path(__file__).resolve().parent


class Classifier(pl.LightningModule):
    """Cross-entropy training of ``net`` with ``recipe`` (SGD momentum 0.9 or AdamW), cosine
    over ``epochs``; logs epoch means of ``train_/val_`` loss and accuracy."""

    def __init__(self, net: nn.Module, recipe: dict[str, Any], epochs: int) -> None:
        super().__init__()
        self.net, self.recipe, self.epochs = net, recipe, epochs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean(), on_step=False,
                 on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):  # noqa: D102
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):  # noqa: D102
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:  # noqa: D102
        r = self.recipe
        if r["optimizer"] == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=r["lr"], momentum=0.9,
                                        weight_decay=r["weight_decay"])
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=r["lr"],
                                          weight_decay=r["weight_decay"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def probe(name: str, seed: int, epochs: int, root: str) -> list[Any]:
    """One run: the architecture's recipe at ``seed`` with a default ``SpectralMonitor``;
    returns its table row."""
    build, recipe = ARCHITECTURES[name]
    pl.seed_everything(seed, verbose=False)
    monitor = SpectralMonitor(figures_every_n=0)
    accuracies: list[float] = []

    class Accuracies(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                accuracies.append(float(trainer.callback_metrics["val_acc"]))

    started = time.perf_counter()
    trainer = trainer_for(epochs, [monitor, Accuracies()], deterministic=False,
                          default_root_dir=HERE / "runs" / f"{name}_seed{seed}")
    trainer.fit(Classifier(build(), recipe, epochs),
                FashionMNISTDataModule(root, batch_size=128, train_size=4000, val_size=1000,
                                       seed=seed))
    alerts = monitor.alert_engine.alerts_so_far
    counted = [a for a in alerts if a.severity != "info"]
    first = {}
    for alert in alerts:
        first.setdefault(alert.rule, alert.epoch)
    return [name, seed, " ".join(f"{a:.3f}" for a in accuracies),
            "; ".join(f"{a.rule} {a.epoch}" for a in counted) or "none",
            "; ".join(f"{r} {e}" for r, e in first.items()
                      if all(a.rule != r for a in counted)) or "none",
            counted[0].message if counted else "", f"{time.perf_counter() - started:.0f}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--architectures", nargs="+", choices=sorted(ARCHITECTURES),
                        default=list(ARCHITECTURES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", default=FASHION_MNIST_ROOT)
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args(argv)
    require_fashion_mnist(args.root)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "svd_callback"):
        logging.getLogger(name).setLevel(logging.ERROR)
    rows = []
    for seed in args.seeds:
        for name in args.architectures:
            rows.append(probe(name, seed, args.epochs, args.root))
            print(" | ".join(map(str, rows[-1][:5])), flush=True)
    text = "\n".join([
        f"Generated by `{command_line()}` on {machine_line()}.", "",
        markdown_table(["architecture", "seed", "val accuracy per epoch",
                        "warnings (epoch)", "information only (first epoch)",
                        "first warning", "seconds"], rows),
    ])
    print(text)
    write_results(args.results, "Alert probe", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
