"""The runs of the zoo: two model/data pairs, each with healthy recipes and failure kinds.

A run is (pair, kind, seed). ``RunSpec.model_kwargs`` is the recipe of the model
(:class:`~svd_callback.examples.SmallCNN` or :class:`~svd_callback.examples.ResNet`), and
``RunSpec.data_kwargs`` the changes to the pair's data (random labels, a tiny training set).
Failures that are not a recipe (a frozen layer, a bad initialisation) are applied by
:func:`build_model` after construction, from the seeded initial weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from svd_callback.examples import DigitsDataModule, FashionMNISTDataModule, ResNet, SmallCNN

HEALTHY = "healthy"
BROKEN = "failure"


@dataclass(frozen=True)
class Kind:
    """One recipe of a pair: ``role`` is :data:`HEALTHY` or :data:`BROKEN` (an injected failure);
    ``model`` holds constructor arguments, ``data`` data-module arguments, ``frozen`` modules
    whose parameters do not train, ``init_scale`` a factor on every conv/linear weight at init,
    ``zero`` modules whose weight starts at zero, ``what`` one line for the tables."""

    name: str
    role: str
    what: str
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    frozen: tuple[str, ...] = ()
    init_scale: float = 1.0
    zero: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pair:
    """A model/data pair: its data module, model class, training length and recipes."""

    name: str
    what: str
    epochs: int
    data: dict[str, Any]
    model: dict[str, Any]
    kinds: tuple[Kind, ...]
    seeds: tuple[int, ...]

    def kind(self, name: str) -> Kind:
        for kind in self.kinds:
            if kind.name == name:
                return kind
        raise KeyError(f"pair {self.name!r} has no kind {name!r}; have "
                       f"{[k.name for k in self.kinds]}")

    def datamodule(self, kind: Kind, seed: int, **overrides: Any):
        options = {**self.data, **kind.data, **overrides, "seed": seed}
        if self.name == "digits_cnn":
            options.pop("train_size", None)
            return DigitsDataModule(**options)
        return FashionMNISTDataModule(**options)


SGD = {"optimizer": "sgd", "momentum": 0.9}

DIGITS = Pair(
    name="digits_cnn",
    what="SmallCNN (3 convs, 2 linears, no normalisation) on scikit-learn's 8x8 digits "
         "(1437 training / 360 validation images)",
    epochs=15,
    data={"batch_size": 64},
    model={"image_size": 8, "width": 16, "hidden": 64},
    seeds=(0, 1, 2),
    kinds=(
        Kind("adam", HEALTHY, "Adam lr 3e-3, constant (the shipped config)",
             {"optimizer": "adam", "lr": 3e-3}),
        Kind("adamw_cosine_wd", HEALTHY, "AdamW lr 3e-3, weight decay 0.05, cosine",
             {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "schedule": "cosine"}),
        Kind("sgd", HEALTHY, "SGD momentum 0.9 lr 0.1, constant",
             {**SGD, "lr": 0.1}),
        Kind("sgd_cosine_wd", HEALTHY, "SGD momentum 0.9 lr 0.1, weight decay 5e-4, cosine",
             {**SGD, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine"}),
        Kind("lr_nan", BROKEN, "SGD momentum 0.9 at lr 300 (diverges to NaN)",
             {**SGD, "lr": 300.0}),
        Kind("lr_dead", BROKEN, "Adam at lr 0.1, 33x the good rate (dead ReLUs, no NaN)",
             {"optimizer": "adam", "lr": 0.1}),
        Kind("lr_tiny", BROKEN, "Adam at lr 1e-6 (nothing learns)",
             {"optimizer": "adam", "lr": 1e-6}),
        Kind("labels_50", BROKEN, "Adam lr 3e-3, 50% of the training labels random",
             {"optimizer": "adam", "lr": 3e-3}, {"label_noise": 0.5}),
        Kind("labels_100", BROKEN, "Adam lr 3e-3, every training label random",
             {"optimizer": "adam", "lr": 3e-3}, {"label_noise": 1.0}),
        Kind("tiny_data", BROKEN, "Adam lr 3e-3 on the first 100 training images, batch 16 "
             "(over-fits)", {"optimizer": "adam", "lr": 3e-3}, {"limit": 100, "batch_size": 16}),
        Kind("frozen", BROKEN, "Adam lr 3e-3, features.2 and hidden frozen at init",
             {"optimizer": "adam", "lr": 3e-3}, frozen=("features.2", "hidden")),
        Kind("bad_init", BROKEN, "Adam lr 3e-3, every weight 30x its default init",
             {"optimizer": "adam", "lr": 3e-3}, init_scale=30.0),
        Kind("explode", BROKEN, "SGD momentum 0.9 at lr 20, no normalisation: weights and "
             "loss blow up (loss ~1e2, finite)", {**SGD, "lr": 20.0}),
    ),
)

RESNET = Pair(
    name="fashion_resnet",
    what="BatchNorm ResNet-8 (width 16, stride-2 stem, 3 stages of one basic block) on "
         "Fashion-MNIST 28x28: a fixed class-stratified 30000-image training subset (half "
         "the set, for time), the full 10000-image test set as validation",
    epochs=12,
    data={"batch_size": 128, "train_size": 30000, "val_size": None},
    model={"depth": 8, "width": 16, "stem_stride": 2},
    seeds=(0, 1, 2, 3),
    kinds=(
        Kind("sgd_cosine_wd", HEALTHY, "SGD momentum 0.9 lr 0.05, weight decay 5e-4, cosine",
             {**SGD, "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"}),
        Kind("sgd", HEALTHY, "SGD momentum 0.9 lr 0.05, constant",
             {**SGD, "lr": 0.05, "weight_decay": 0.0, "schedule": "constant"}),
        Kind("adam", HEALTHY, "Adam lr 1e-3, constant",
             {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant"}),
        Kind("adamw_cosine_wd", HEALTHY, "AdamW lr 2e-3, weight decay 0.05, cosine",
             {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "schedule": "cosine"}),
        Kind("lr_nan", BROKEN, "SGD momentum 0.9 at lr 50 (diverges to NaN)",
             {**SGD, "lr": 50.0, "schedule": "constant"}),
        Kind("lr_dead", BROKEN, "Adam at lr 10 (collapses to chance without NaN)",
             {"optimizer": "adam", "lr": 10.0, "weight_decay": 0.0, "schedule": "constant"}),
        Kind("lr_tiny", BROKEN, "SGD momentum 0.9 at lr 1e-5 (nothing learns)",
             {**SGD, "lr": 1e-5, "schedule": "constant"}),
        Kind("labels_50", BROKEN, "the SGD cosine recipe, 50% of the training labels random",
             {**SGD, "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"},
             {"label_noise": 0.5}),
        Kind("labels_100", BROKEN, "the SGD cosine recipe, every training label random",
             {**SGD, "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"},
             {"label_noise": 1.0}),
        Kind("tiny_data", BROKEN, "the SGD cosine recipe on the first 300 training images",
             {**SGD, "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"},
             {"limit": 300, "batch_size": 32}),
        Kind("frozen", BROKEN, "the SGD cosine recipe, stage2 and stage3 convs frozen at init",
             {**SGD, "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"},
             frozen=("stage2.0.conv1", "stage2.0.conv2", "stage3.0.conv1", "stage3.0.conv2")),
        Kind("bad_init", BROKEN, "the SGD cosine recipe, every weight 100x its default init "
             "(BatchNorm hides the scale of the convs, whose effective step shrinks 1e4x; the "
             "head's logits grow 100x)",
             {**SGD, "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"}, init_scale=100.0),
        Kind("explode", BROKEN, "no BatchNorm, SGD momentum 0.9 lr 0.2: the unnormalised "
             "residual net blows up in its first steps", {**SGD, "lr": 0.2, "weight_decay": 0.0,
                                                          "schedule": "constant", "norm": False}),
    ),
)

PAIRS: dict[str, Pair] = {DIGITS.name: DIGITS, RESNET.name: RESNET}


def build_model(pair: Pair, kind: Kind) -> nn.Module:
    """The pair's model with the kind's recipe, then its frozen modules, init scale and zeroed
    weights applied (after the seeded default initialisation)."""
    options = {**pair.model, **kind.model}
    model = SmallCNN(**options) if pair.name == "digits_cnn" else ResNet(**options)
    modules = dict(model.named_modules())
    with torch.no_grad():
        if kind.init_scale != 1.0:
            for module in modules.values():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    module.weight.mul_(kind.init_scale)
        for name in kind.zero:
            modules[name].weight.zero_()
    for name in kind.frozen:
        for parameter in modules[name].parameters():
            parameter.requires_grad_(False)
    return model
