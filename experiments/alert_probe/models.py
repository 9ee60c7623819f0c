"""Architectures of the alert probe: library models of torchvision and PyTorch that no alert
default was tuned on, adapted to 1 x 28 x 28 Fashion-MNIST images (10 classes)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

__all__ = ["ARCHITECTURES", "RowGRU", "RowTransformer", "mobilenet_v3_small", "resnet18"]


def resnet18() -> nn.Module:
    """torchvision's ResNet-18 (11M parameters, BatchNorm) with the CIFAR-style stem: a 3 x 3
    stride-1 first conv on one channel and no max-pool."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def mobilenet_v3_small() -> nn.Module:
    """torchvision's MobileNetV3-small (depthwise and squeeze-excitation convs, hard-swish,
    BatchNorm with momentum 0.01) with a one-channel stride-1 first conv."""
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    model.features[0][0] = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
    return model


class RowTransformer(nn.Module):
    """``nn.TransformerEncoder`` (2 layers, width 64, 4 heads, feed-forward 128) over the 28
    image rows as tokens, a learned position embedding, mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(28, 64)
        self.position = nn.Parameter(torch.zeros(1, 28, 64))
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        tokens = self.embed(x.squeeze(1)) + self.position
        return self.head(self.encoder(tokens).mean(1))


class RowGRU(nn.Module):
    """``nn.GRU`` (2 layers, hidden 128) reading the 28 image rows, the last state classified."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(28, 128, num_layers=2, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out, _ = self.rnn(x.squeeze(1))
        return self.head(out[:, -1])


ARCHITECTURES = {
    "resnet18": (resnet18, {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4}),
    "mobilenet_v3_small": (mobilenet_v3_small,
                           {"optimizer": "sgd", "lr": 0.05, "weight_decay": 4e-5}),
    "row_transformer": (RowTransformer, {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01}),
    "row_gru": (RowGRU, {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.0}),
}
"""name -> (builder, its recipe: SGD with momentum 0.9 or AdamW, cosine over the run)."""
