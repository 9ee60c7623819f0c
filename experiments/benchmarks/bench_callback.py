"""Overhead of SpectralMonitor: one analysis against one training step and one training epoch.

Two models, CPU, measured in one process with pinned threads:

- the digits SmallCNN (8x8 images, batch 128): a real Lightning epoch on the digits data;
- torchvision ResNet-18 (num_classes=10) on random 32x32 images, batch 128: the step is timed
  on a plain training loop (SGD, cross-entropy), the "epoch" is a CIFAR-10-sized epoch
  (50000 / 128 = 391 steps) estimated from the step time.

"One analysis" is the callback's whole work at an epoch end (analysis, aggregates, alerts,
logger scalars, histograms, history file; figures excluded, timed separately) in a Lightning
run with a TensorBoardLogger; ``analyze()`` alone is timed beside it. Reported as ratios.
Target: one unfold analysis of ResNet-18 < 10 training steps at batch 128.

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 \
        .venv/bin/python -m experiments.benchmarks.bench_callback
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from svd_callback.analysis import analyze
from svd_callback.callback import SpectralMonitor
from svd_callback.examples import DigitsDataModule, SmallCNN

BATCH = 128
CIFAR_STEPS = 50000 // BATCH + 1


class Timings(pl.Callback):
    """Wall time of every training step and epoch."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.epochs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(time.perf_counter() - self._step)

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        # runs before SpectralMonitor's epoch-end hook when listed first: the epoch excludes it
        self.epochs.append(time.perf_counter() - self._epoch)


def timed_monitor(**kwargs) -> tuple[SpectralMonitor, dict[str, list[float]]]:
    """A monitor whose analyses (figure drawing subtracted) and figure drawing are timed."""
    monitor = SpectralMonitor(**kwargs)
    times: dict[str, list[float]] = {"analysis": [], "figures": []}
    publisher = monitor.publisher
    draw, analyse = publisher._write_figures, monitor._analyse

    def timed_draw(*args, **kw):
        start = time.perf_counter()
        result = draw(*args, **kw)
        times["figures"].append(time.perf_counter() - start)
        return result

    def timed_analyse(*args, **kw):
        drawn = len(times["figures"])
        start = time.perf_counter()
        result = analyse(*args, **kw)
        elapsed = time.perf_counter() - start - sum(times["figures"][drawn:])
        times["analysis"].append(elapsed)
        return result

    publisher._write_figures, monitor._analyse = timed_draw, timed_analyse
    return monitor, times


def fit(model, data, callbacks, root: Path, epochs: int, batches: int | None = None) -> None:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, callbacks=callbacks,
        logger=TensorBoardLogger(root, name="bench"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, limit_train_batches=batches, log_every_n_steps=10,
    )
    trainer.fit(model, data)


def bench_digits(root: Path, modes: tuple[str, ...]) -> dict[str, float]:
    pl.seed_everything(0, verbose=False)
    timings = Timings()
    fit(SmallCNN(), DigitsDataModule(batch_size=BATCH), [timings], root / "plain", epochs=4)
    pl.seed_everything(0, verbose=False)
    monitor, times = timed_monitor(conv_mode=modes, figures_every_n=2)
    model = SmallCNN()
    fit(model, DigitsDataModule(batch_size=BATCH), [monitor], root / "watched", epochs=4)
    analysis = statistics.median(times["analysis"][1:])  # warm analyses (not the first)
    start = time.perf_counter()
    for _ in range(5):
        analyze(model, conv_mode=modes, example_input=model.example_input_array)
    bare = (time.perf_counter() - start) / 5
    return {
        "step": statistics.median(timings.steps[5:]),
        "epoch": statistics.median(timings.epochs[1:]),
        "analysis": analysis,
        "analyze": bare,
        "figures": statistics.median(times["figures"]) if times["figures"] else float("nan"),
    }


class RandomImages(pl.LightningDataModule):
    def __init__(self, n_batches: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n_batches * BATCH, 3, 32, 32, generator=generator)
        self.y = torch.randint(0, 10, (n_batches * BATCH,), generator=generator)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=BATCH)


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.example_input_array = torch.zeros(1, 3, 32, 32)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def resnet18() -> nn.Module:
    from torchvision.models import resnet18 as make

    torch.manual_seed(0)
    return make(num_classes=10)


def train_step_time(model: nn.Module, repeats: int = 4) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    model.train()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_resnet(root: Path, modes: tuple[str, ...]) -> dict[str, float]:
    step = train_step_time(resnet18())
    monitor, times = timed_monitor(conv_mode=modes, figures_every_n=1)
    model = Classifier(resnet18())
    fit(model, RandomImages(2), [monitor], root / f"resnet_{'_'.join(modes)}", epochs=2)
    start = time.perf_counter()
    analyze(model, conv_mode=modes, example_input=model.example_input_array)
    bare = time.perf_counter() - start
    return {
        "step": step,
        "epoch": step * CIFAR_STEPS,
        "analysis": statistics.median(times["analysis"][1:]),
        "analyze": bare,
        "figures": statistics.median(times["figures"]),
    }


def report(name: str, r: dict[str, float], epoch_note: str) -> None:
    print(
        f"{name:34s} step {r['step']:7.3f} s  epoch {r['epoch']:8.2f} s{epoch_note}  "
        f"analysis {r['analysis']:6.3f} s (analyze() alone {r['analyze']:6.3f} s, figures "
        f"{r['figures']:5.2f} s)\n{'':34s} analysis / step = {r['analysis'] / r['step']:6.2f}   "
        f"analysis / epoch = {r['analysis'] / r['epoch']:7.4f}   "
        f"figures / step = {r['figures'] / r['step']:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for modes in (("unfold",), ("unfold", "operator")):
            report(f"digits SmallCNN {'+'.join(modes)}", bench_digits(root, modes), "")
        if not args.skip_resnet:
            for modes in (("unfold",), ("slices",), ("operator",)):
                report(f"resnet18 32x32 {'+'.join(modes)}", bench_resnet(root, modes),
                       f" (= {CIFAR_STEPS} steps)")


if __name__ == "__main__":
    main()
