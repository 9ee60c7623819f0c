"""Example classifiers as LightningModules: a small CNN for 8x8 digits or 28x28 Fashion-MNIST and
a CIFAR-style BatchNorm ResNet (He et al. 2016, section 4.2), with a choice of optimiser and
learning-rate schedule so that one module serves healthy and broken training recipes alike."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "BasicBlock",
    "Classifier",
    "ResNet",
    "SmallCNN",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


class Classifier(pl.LightningModule):
    """Cross-entropy training and validation steps, epoch means of loss and accuracy logged as
    ``train_loss``/``train_acc``/``val_loss``/``val_acc``, and the optimiser of the recipe in
    ``hparams``: ``optimizer`` (``"adam"``, ``"adamw"`` or ``"sgd"`` with ``momentum``), ``lr``,
    ``weight_decay`` and ``schedule`` (``"constant"`` or ``"cosine"``: cosine annealing to 0
    over the trainer's ``max_epochs``, stepped per epoch). Only parameters with
    ``requires_grad`` are optimised (frozen layers keep their values)."""

    def _check_recipe(self) -> None:
        if self.hparams.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got "
                             f"{self.hparams.optimizer!r}")
        if self.hparams.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got "
                             f"{self.hparams.schedule!r}")

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        # epoch means for every stage (the training loss too: what GeneralizationGap compares)
        self.log(f"{stage}_loss", loss, prog_bar=stage == "val", on_step=False, on_epoch=True)
        self.log(f"{stage}_acc", acc, prog_bar=stage == "val", on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):  # noqa: D102
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):  # noqa: D102
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:  # noqa: D102
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if h.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=h.lr, momentum=h.momentum,
                                        weight_decay=h.weight_decay)
        elif h.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.weight_decay)
        else:
            optimizer = torch.optim.Adam(params, lr=h.lr, weight_decay=h.weight_decay)
        if h.schedule == "constant":
            return optimizer
        epochs = max(1, int(self.trainer.max_epochs or 1))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}


class SmallCNN(Classifier):
    """Three 3x3 convs (max-pooled once), average pooling to a 2x2 grid, a hidden linear layer
    and a classifier: about 94% validation accuracy on digits after 8 epochs (Adam, lr 3e-3).

    Args:
        in_channels: image channels.
        num_classes: number of classes.
        width: channels of the first conv block (the second has ``2 * width``).
        hidden: width of the hidden linear layer (the penultimate features).
        image_size: side of the (square) input images, for ``example_input_array``.
        lr: learning rate.
        weight_decay: weight decay (L2 for Adam and SGD, decoupled for AdamW).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        momentum: SGD momentum.
        schedule: ``"constant"`` or ``"cosine"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        hidden: int = 64,
        image_size: int = 8,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        momentum: float = 0.9,
        schedule: str = "constant",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_recipe()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.hidden = nn.Linear(2 * width * 4, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        self.example_input_array = torch.zeros(1, in_channels, image_size, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.features(x)).flatten(1)
        return self.classifier(F.relu(self.hidden(h)))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut (identity, or a strided 1x1
    conv and BN when the shape changes), then ReLU. ``norm=False`` drops every BatchNorm (the
    convs get biases instead)."""

    def __init__(self, in_channels: int, channels: int, stride: int, norm: bool) -> None:
        super().__init__()

        def bn() -> nn.Module:
            return nn.BatchNorm2d(channels) if norm else nn.Identity()

        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=not norm)
        self.bn1 = bn()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=not norm)
        self.bn2 = bn()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=not norm), bn())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(Classifier):
    """CIFAR-style ResNet with BatchNorm (He et al., "Deep Residual Learning for Image
    Recognition", CVPR 2016, section 4.2): a 3x3 stem conv, three stages of ``n`` basic blocks
    with ``width``, ``2 width`` and ``4 width`` channels (the last two stages halve the
    resolution), global average pooling and a linear head; ``depth = 6 n + 2`` (8, 14, 20, ...).

    Args:
        depth: 6 n + 2 layers.
        width: channels of the first stage (>= 16 for the published nets).
        in_channels, num_classes, image_size: data shape.
        stem_stride: stride of the stem conv (2 halves the work on 28x28 inputs).
        norm: False drops every BatchNorm (an unnormalised residual net).
        lr, weight_decay, optimizer, momentum, schedule: the recipe, as for
            :class:`SmallCNN` (default: SGD, momentum 0.9, lr 0.05, weight decay 5e-4, cosine).

    Raises:
        ValueError: depth not of the form 6 n + 2, or an unknown optimiser or schedule.
    """

    def __init__(
        self,
        depth: int = 8,
        width: int = 16,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        stem_stride: int = 1,
        norm: bool = True,
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        schedule: str = "cosine",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6 n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        self.save_hyperparameters()
        self._check_recipe()
        blocks = (depth - 2) // 6
        self.stem = nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=not norm)
        self.stem_bn = nn.BatchNorm2d(width) if norm else nn.Identity()
        stages, channels = [], width
        for index, out in enumerate((width, 2 * width, 4 * width)):
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, out, stride, norm))
                channels = out
            stages.append(nn.Sequential(*layers))
        self.stage1, self.stage2, self.stage3 = stages
        self.head = nn.Linear(channels, num_classes)
        self.example_input_array = torch.zeros(1, in_channels, image_size, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem_bn(self.stem(x)))
        h = self.stage3(self.stage2(self.stage1(h)))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))
