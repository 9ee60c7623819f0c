"""The zoo's data: the library's digits and Fashion-MNIST data modules with three pixel scales
and optional augmentation, and the in-place corruptions of a training set that the mid-run
failures switch on.

Pixel scales (``pixels``), applied to the training and the validation images alike:
``"standard"`` (the data module's own: Fashion-MNIST standardised with its mean 0.2860 and
std 0.3530, digits scaled to [0, 1]); ``"unit"`` (Fashion-MNIST in [0, 1], torchvision's
``ToTensor``, as the LSTM and VAE examples read it); ``"raw"`` (the stored integers: 0-255 for
Fashion-MNIST, 0-16 for scikit-learn's digits: a pipeline that forgot to normalise).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from svd_callback.examples import DigitsDataModule, FashionMNISTDataModule

PIXELS = ("standard", "unit", "raw")
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


class Augmented(Dataset):
    """Random crop after zero padding by ``pad`` pixels (each image shifted by up to ``pad``
    pixels in each direction) and, with ``flip``, a horizontal flip with probability 1/2; drawn
    from torch's global generator (seeded by the run)."""

    def __init__(self, base: Dataset, pad: int = 2, flip: bool = True) -> None:
        self.base, self.pad, self.flip = base, pad, flip

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[index]
        if self.pad:
            _, h, w = x.shape
            padded = torch.nn.functional.pad(x, (self.pad,) * 4)
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = padded[:, dy:dy + h, dx:dx + w]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = torch.flip(x, dims=(-1,))
        return x, y


def tensors_of(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) tensors under a training set (through :class:`Augmented` and
    ``Subset`` wrappers): what the mid-run corruptions change in place."""
    while not isinstance(dataset, TensorDataset):
        if isinstance(dataset, (Augmented, Subset)):
            dataset = dataset.base if isinstance(dataset, Augmented) else dataset.dataset
        else:
            raise TypeError(f"no TensorDataset under {type(dataset).__name__}")
    x, y = dataset.tensors
    return x, y


def randomise_labels(dataset: Dataset, num_classes: int, seed: int) -> None:
    """Replace every training label by a uniformly random one, in place (seeded)."""
    _, y = tensors_of(dataset)
    g = torch.Generator().manual_seed(seed + 7919)
    y.copy_(torch.randint(0, num_classes, y.shape, generator=g))


def zero_inputs(dataset: Dataset) -> None:
    """Set every training image to zero, in place."""
    x, _ = tensors_of(dataset)
    x.zero_()


def _rescale(x: torch.Tensor, dataset: str, pixels: str) -> torch.Tensor:
    if pixels == "standard":
        return x
    if dataset == "digits":
        if pixels == "unit":
            return x
        return x * 16.0
    unit = x * FASHION_STD + FASHION_MEAN
    return unit if pixels == "unit" else torch.round(unit * 255.0)


class _ZooData:
    """Mixin: rescale pixels and wrap the training set after the parent's ``setup``."""

    dataset_name = ""

    def _zoo_options(self, pixels: str, augment: bool, pad: int, flip: bool) -> None:
        if pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {PIXELS}, got {pixels!r}")
        self.pixels, self.augment, self.pad, self.flip = pixels, augment, pad, flip
        self._zoo_ready = False

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)  # type: ignore[misc]
        if self._zoo_ready:
            return
        self._zoo_ready = True
        for name in ("train_set", "val_set"):
            x, _ = tensors_of(getattr(self, name))
            x.copy_(_rescale(x.clone(), self.dataset_name, self.pixels))
        if self.augment:
            self.train_set = Augmented(self.train_set, self.pad, self.flip)


class ZooDigits(_ZooData, DigitsDataModule):
    """:class:`~svd_callback.examples.DigitsDataModule` with ``pixels`` and ``augment`` (crop
    after padding by ``pad``; digits are not flipped)."""

    dataset_name = "digits"

    def __init__(self, pixels: str = "standard", augment: bool = False, pad: int = 1,
                 flip: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._zoo_options(pixels, augment, pad, flip)


class ZooFashion(_ZooData, FashionMNISTDataModule):
    """:class:`~svd_callback.examples.FashionMNISTDataModule` with ``pixels`` and ``augment``
    (crop after padding by ``pad``, horizontal flips)."""

    dataset_name = "fashion"

    def __init__(self, pixels: str = "standard", augment: bool = False, pad: int = 2,
                 flip: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._zoo_options(pixels, augment, pad, flip)
