"""The digits SmallCNN with BatchNorm after every conv (conv -> BN -> ReLU, convs without bias),
for the BatchNorm-aware rules of ``experiments/alert_rules``."""

from __future__ import annotations

import torch
from torch import nn

from svd_callback.examples import SmallCNN


class BatchNormCNN(SmallCNN):
    """:class:`~svd_callback.examples.SmallCNN` whose convs feed BatchNorm2d.

    Args:
        optimizer: ``"adam"`` (Adam, as SmallCNN) or ``"sgd"`` (SGD, momentum 0.9).
        **kwargs: as for ``SmallCNN`` (``lr``, ``weight_decay``, ...).
    """

    def __init__(self, optimizer: str = "adam", **kwargs) -> None:
        super().__init__(**kwargs)
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.optimizer = optimizer
        c, w = self.hparams.in_channels, self.hparams.width
        self.features = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        )

    def configure_optimizers(self):  # noqa: D102
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9,
                                   weight_decay=self.hparams.weight_decay)
        return super().configure_optimizers()
