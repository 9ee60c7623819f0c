"""Failures that start mid-run: a callback that switches one on at the start of a stated epoch,
after a healthy start.

The switch acts at ``on_train_epoch_start`` of the epoch whose 0-based index is ``onset``: the
first ``onset`` epochs train as the healthy recipe does, analysis ``onset`` (after ``onset``
epochs) is the last one of the healthy run, and the failure acts on every later epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn

from experiments.alert_zoo.data import randomise_labels, zero_inputs

SWITCHES = ("lr", "labels", "inputs", "freeze")


@dataclass(frozen=True)
class Switch:
    """What changes at the onset: ``"lr"`` multiplies every learning rate (and the schedule's
    base rates) by ``factor`` (100: a learning-rate spike; 0: the rate dropped to 0);
    ``"labels"`` replaces every training label by a random one; ``"inputs"`` sets every
    training image to zero; ``"freeze"`` stops training every parameter except those of the
    last ``nn.Linear`` module (the head)."""

    what: str
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.what not in SWITCHES:
            raise ValueError(f"switch must be one of {SWITCHES}, got {self.what!r}")


def last_linear(module: nn.Module) -> str:
    """The name of the last ``nn.Linear`` in ``named_modules`` order (the head)."""
    names = [name for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]
    if not names:
        raise ValueError("the model has no nn.Linear head to keep training")
    return names[-1]


class MidRunSwitch(Callback):
    """Switch ``switch`` on at the start of epoch ``onset`` (0-based); ``applied`` records when
    (``epoch``, ``global_step``) and what changed."""

    def __init__(self, switch: Switch, onset: int, seed: int, num_classes: int = 10) -> None:
        super().__init__()
        if onset < 1:
            raise ValueError(f"a mid-run switch needs onset >= 1, got {onset}")
        self.switch, self.onset, self.seed, self.num_classes = switch, onset, seed, num_classes
        self.applied: dict[str, Any] | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.onset or self.applied is not None:
            return
        what = self.switch.what
        detail: dict[str, Any] = {}
        if what == "lr":
            detail["lr_before"] = scale_learning_rates(trainer, self.switch.factor)
        elif what == "labels":
            randomise_labels(trainer.datamodule.train_set, self.num_classes, self.seed)
        elif what == "inputs":
            zero_inputs(trainer.datamodule.train_set)
        else:
            head = last_linear(pl_module)
            frozen = []
            for name, parameter in pl_module.named_parameters():
                if not name.startswith(head + "."):
                    parameter.requires_grad_(False)
                    parameter.grad = None
                    frozen.append(name)
            detail["frozen"] = frozen
        self.applied = {"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                        "what": what, "factor": self.switch.factor, **detail}


def scale_learning_rates(trainer: pl.Trainer, factor: float) -> list[float]:
    """Multiply every optimiser group's learning rate, and every scheduler's base rates, by
    ``factor``; returns the rates before."""
    before = []
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            before.append(float(group["lr"]))
            group["lr"] = group["lr"] * factor
            if "initial_lr" in group:
                group["initial_lr"] = group["initial_lr"] * factor
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [rate * factor for rate in scheduler.base_lrs]
    return before
