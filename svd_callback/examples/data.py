"""Data modules: scikit-learn's bundled digits, Fashion-MNIST from local IDX files, and image
folders (CIFAR-10 style) from a user's path. Nothing is ever downloaded."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = [
    "FASHION_MNIST_ROOT",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "read_idx",
    "stratified_split",
]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files."""


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a class-stratified train/validation split, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class _LoaderDataModule(pl.LightningDataModule):
    """Shared train (shuffled) and validation loaders over ``train_set`` / ``val_set``."""

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)


class DigitsDataModule(_LoaderDataModule):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), scaled to [0, 1].

    Args:
        batch_size: loader batch size.
        val_fraction: class-stratified validation share.
        seed: split seed.
        limit: keep only the first ``limit`` training images (to force over-fitting).
        label_noise: fraction of training labels replaced by random ones (seeded).
        num_workers: loader workers.
    """

    num_classes = 10
    image_size = 8

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0,
                 limit: int | None = None, label_noise: float = 0.0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.val_fraction, self.seed, self.limit = val_fraction, seed, limit
        self.label_noise = label_noise

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        train_idx, val_idx = stratified_split(digits.target, self.val_fraction, self.seed)
        self.train_set = _labelled(x[train_idx], y[train_idx], self.limit, self.label_noise,
                                   self.num_classes, self.seed)
        self.val_set = TensorDataset(x[val_idx], y[val_idx])


class FashionMNISTDataModule(_LoaderDataModule):
    """Fashion-MNIST (28x28, 10 classes) read from local IDX files, never downloaded.

    Args:
        root: folder with ``train-images-idx3-ubyte.gz`` and friends (Debian's
            ``dataset-fashion-mnist`` installs them in :data:`FASHION_MNIST_ROOT`).
        batch_size: loader batch size.
        train_size: keep this many training images (class-stratified, seeded); None for all.
        val_size: keep this many test images for validation; None for all 10000.
        seed, limit, label_noise, num_workers: as for :class:`DigitsDataModule`.
    """

    num_classes = 10
    image_size = 28

    def __init__(self, root: str = FASHION_MNIST_ROOT, batch_size: int = 128,
                 train_size: int | None = 12000, val_size: int | None = 2000, seed: int = 0,
                 limit: int | None = None, label_noise: float = 0.0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.root, self.train_size, self.val_size = Path(root), train_size, val_size
        self.seed, self.limit, self.label_noise = seed, limit, label_noise

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x_train, y_train = self._read("train")
        x_val, y_val = self._read("t10k")
        x_train, y_train = _stratified_subset(x_train, y_train, self.train_size, self.seed)
        x_val, y_val = _stratified_subset(x_val, y_val, self.val_size, self.seed)
        self.train_set = _labelled(x_train, y_train, self.limit, self.label_noise,
                                   self.num_classes, self.seed)
        self.val_set = TensorDataset(x_val, y_val)

    def _read(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.root / f"{split}-images-idx3-ubyte.gz"
        labels = self.root / f"{split}-labels-idx1-ubyte.gz"
        for path in (images, labels):
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} not found; Fashion-MNIST is read from local files only "
                    "(on Debian: apt-get install dataset-fashion-mnist, or pass root=)"
                )
        x = torch.tensor(read_idx(images), dtype=torch.float32).unsqueeze(1) / 255.0
        y = torch.tensor(read_idx(labels), dtype=torch.long)
        return (x - 0.2860) / 0.3530, y


class ImageFolderDataModule(_LoaderDataModule):
    """A user's images on disk: ``root/train/<class>/*.png`` and ``root/val/<class>/*`` (or
    ``test``), or a CIFAR-10 python-format folder (``cifar-10-batches-py``). Never downloads.

    Args:
        root: dataset folder.
        image_size: images are resized to this square size.
        batch_size, num_workers: loader settings.
    """

    def __init__(self, root: str, image_size: int = 32, batch_size: int = 128,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.root = Path(root)
        self.image_size = image_size

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from torchvision import datasets, transforms

        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {self.root} is not a directory (nothing is "
                                    "downloaded: point root= at your dataset)")
        tf = transforms.Compose([transforms.Resize((self.image_size, self.image_size)),
                                 transforms.ToTensor()])
        cifar = self.root / "cifar-10-batches-py"
        if cifar.is_dir() or (self.root / "data_batch_1").exists():
            base = self.root if cifar.is_dir() else self.root.parent
            self.train_set = datasets.CIFAR10(str(base), train=True, transform=tf, download=False)
            self.val_set = datasets.CIFAR10(str(base), train=False, transform=tf, download=False)
            return
        val_dir = next((self.root / d for d in ("val", "test") if (self.root / d).is_dir()), None)
        if not (self.root / "train").is_dir() or val_dir is None:
            raise FileNotFoundError(f"{self.root} needs train/<class>/ and val/<class>/ (or "
                                    "test/<class>/) sub-folders, or a CIFAR-10 python folder")
        self.train_set = datasets.ImageFolder(str(self.root / "train"), transform=tf)
        self.val_set = datasets.ImageFolder(str(val_dir), transform=tf)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array (LeCun's MNIST format)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _stratified_subset(x: torch.Tensor, y: torch.Tensor, size: int | None,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None or size >= len(y):
        return x, y
    _, keep = stratified_split(y.numpy(), size / len(y), seed)
    return x[keep], y[keep]


def _labelled(x: torch.Tensor, y: torch.Tensor, limit: int | None, label_noise: float,
              num_classes: int, seed: int) -> Dataset:
    """Training set with an optional size limit and a seeded fraction of random labels."""
    if label_noise > 0:
        g = torch.Generator().manual_seed(seed + 1)
        noisy = torch.rand(len(y), generator=g) < label_noise
        y = torch.where(noisy, torch.randint(0, num_classes, (len(y),), generator=g), y)
    dataset: Dataset = TensorDataset(x, y)
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(y))))
    return dataset
