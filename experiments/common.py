"""Shared helpers of the experiments: data, per-epoch validation records, probes and Markdown
tables (a history file's analyses and their alert replay are the library's:
:mod:`svd_callback.sinks.history_rows`).

Only the public API of ``svd_callback`` is used. Every experiment writes its logs under
``experiments/<name>/runs/`` (git-ignored) and its findings to ``experiments/<name>/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn import functional as F

from svd_callback.examples import DigitsDataModule, FashionMNISTDataModule
from svd_callback.examples.data import FASHION_MNIST_ROOT

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent


# ---------------------------------------------------------------------- provenance
def command_line() -> str:
    """The command that started this process, as typed from the repository root: a module of
    this package (``python -m experiments.<name>.run``) is named by its module path."""
    argv = [sys.argv[0], *sys.argv[1:]]
    with contextlib.suppress(ValueError):
        script = Path(argv[0]).resolve().relative_to(REPO)
        argv[0] = str(script)
        if script.parts[0] == EXPERIMENTS.name and script.suffix == ".py":
            argv[0:1] = ["-m", ".".join(script.with_suffix("").parts)]
    return ".venv/bin/python " + shlex.join(argv)


def machine_line() -> str:
    """One line naming the machine, torch and the thread count the numbers were made with."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = "?"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, lightning "
            f"{pl.__version__}, Python {platform.python_version()}, repository at {commit}")


# ---------------------------------------------------------------------- data and models
def make_datamodule(
    dataset: str = "fashion",
    root: str = FASHION_MNIST_ROOT,
    batch_size: int = 128,
    train_size: int | None = 4000,
    val_size: int | None = 2000,
    seed: int = 0,
    limit: int | None = None,
    label_noise: float = 0.0,
) -> pl.LightningDataModule:
    """Fashion-MNIST read from local IDX files (never downloaded) or scikit-learn's digits."""
    if dataset == "fashion":
        return FashionMNISTDataModule(root=root, batch_size=batch_size, train_size=train_size,
                                      val_size=val_size, seed=seed, limit=limit,
                                      label_noise=label_noise)
    if dataset == "digits":
        return DigitsDataModule(batch_size=batch_size, seed=seed, limit=limit,
                                label_noise=label_noise)
    raise ValueError(f"dataset must be 'fashion' or 'digits', got {dataset!r}")


def image_size_of(dataset: str) -> int:
    return 28 if dataset == "fashion" else 8


def trainer_for(max_epochs: int, callbacks: Sequence[Callback] = (), logger: Any = False,
                **kwargs: Any) -> pl.Trainer:
    """A quiet, deterministic CPU trainer (no checkpoints, no progress bar)."""
    options: dict[str, Any] = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=list(callbacks),
        deterministic=True,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


# ---------------------------------------------------------------------- validation records
@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` over ``loader``, in eval mode (restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct, count = 0.0, 0, 0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            count += int(y.numel())
    finally:
        model.train(was_training)
    if count == 0:
        return math.nan, math.nan
    return total_loss / count, correct / count


class EpochRecorder(Callback):
    """Validation loss/accuracy after k epochs of training, k = 0 (initial weights, measured at
    ``on_train_start`` on the validation loader) .. max_epochs, and the training loss per epoch.

    ``rows[k]`` = ``{"epoch": k, "val_loss", "val_acc", "train_loss", "seconds"}``; the epoch
    numbering is the one of :class:`~svd_callback.SpectralMonitor`'s analyses at
    ``train_epoch_end`` (epoch k = after k epochs of training).
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []
        self._started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()
        loader = trainer.datamodule.val_dataloader()
        loss, acc = evaluate(pl_module, loader)
        self.rows = [{"epoch": 0, "val_loss": loss, "val_acc": acc, "train_loss": math.nan,
                      "seconds": 0.0}]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.rows.append({
            "epoch": trainer.current_epoch + 1,
            "val_loss": _metric(metrics, "val_loss"),
            "val_acc": _metric(metrics, "val_acc"),
            "train_loss": math.nan,
            "seconds": time.perf_counter() - self._started,
        })

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.rows and self.rows[-1]["epoch"] == trainer.current_epoch + 1:
            self.rows[-1]["train_loss"] = _metric(trainer.callback_metrics, "train_loss")

    def series(self, key: str) -> list[float]:
        return [row[key] for row in self.rows]


def _metric(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key)
    return math.nan if value is None else float(value)


# ---------------------------------------------------------------------- probes
def stratified_probe(datamodule: pl.LightningDataModule, size: int = 256, seed: int = 0):
    """A fixed class-stratified probe of the validation set (``svd_callback.classes``)."""
    from svd_callback.classes import ProbeSet

    datamodule.setup("fit")
    return ProbeSet.from_dataset(datamodule.val_set, size=size, seed=seed)


# ---------------------------------------------------------------------- tables
def fmt(value: Any, digits: int = 3) -> str:
    """Compact cell text: floats with ``digits`` significant digits, NaN/None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v, digits).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- RESULTS.md
BEGIN_MARK = "<!-- generated by run.py: begin -->"
END_MARK = "<!-- generated by run.py: end -->"


def write_results(path: str | os.PathLike, title: str, generated: str,
                  block_name: str | None = None) -> Path:
    """Write ``generated`` between the markers of ``path`` (created with ``title`` when new),
    keeping any hand-written text outside the markers; a file without the markers (e.g. a
    protocol written before the runs) keeps its text and gets the block appended.
    ``block_name`` names a second generated block (markers ``<!-- generated by run.py
    (<name>): begin -->`` ...)."""
    path = Path(path)
    begin, end = BEGIN_MARK, END_MARK
    if block_name is not None:
        begin = BEGIN_MARK.replace("run.py", f"run.py ({block_name})")
        end = END_MARK.replace("run.py", f"run.py ({block_name})")
    block = f"{begin}\n{generated.strip()}\n{end}"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            path.write_text(head + block + tail, encoding="utf-8")
            return path
        if text.strip():
            path.write_text(f"{text.rstrip()}\n\n{block}\n", encoding="utf-8")
            return path
    path.write_text(f"# {title}\n\n{block}\n", encoding="utf-8")
    return path
