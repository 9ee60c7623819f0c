"""Example data modules: stratified splits, label noise, local files only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from svd_callback.examples import DigitsDataModule, FashionMNISTDataModule, ImageFolderDataModule
from svd_callback.examples.data import read_idx, stratified_split


def test_stratified_split_is_deterministic_and_balanced():
    labels = np.repeat(np.arange(4), 25)
    train, val = stratified_split(labels, 0.2, seed=3)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 100
    assert np.bincount(labels[val]).tolist() == [5, 5, 5, 5]
    assert np.array_equal(val, stratified_split(labels, 0.2, seed=3)[1])


def test_digits_limit_and_label_noise():
    clean = DigitsDataModule(limit=100)
    clean.setup()
    assert len(clean.train_set) == 100
    noisy = DigitsDataModule(label_noise=1.0)
    noisy.setup()
    reference = DigitsDataModule()
    reference.setup()
    y_noisy = torch.stack([y for _, y in noisy.train_set])
    y_clean = torch.stack([y for _, y in reference.train_set])
    assert 0.05 < (y_noisy == y_clean).float().mean() < 0.2  # random labels: ~1/10 agree
    x, y = next(iter(reference.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and float(x.max()) <= 1.0


def test_fashion_mnist_reads_local_idx_files_only(tmp_path, write_idx):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 30)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").tolist()[:3] == [0, 1, 2]
    dm = FashionMNISTDataModule(root=str(tmp_path), train_size=40, val_size=None)
    dm.setup()
    assert len(dm.train_set) == 40 and len(dm.val_set) == 30
    with pytest.raises(FileNotFoundError, match="local files only"):
        FashionMNISTDataModule(root=str(tmp_path / "missing")).setup()


def test_image_folder_layout_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 255, (12, 10, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / label / f"{i}.png")
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, batch_size=4)
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 8, 8) and set(y.tolist()) <= {0, 1}
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        ImageFolderDataModule(str(tmp_path / "nope")).setup()
    with pytest.raises(FileNotFoundError, match="sub-folders"):
        ImageFolderDataModule(str(tmp_path / "train")).setup()
