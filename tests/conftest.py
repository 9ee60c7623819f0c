"""Fixtures shared by several test files."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from devices import DEVICES
from torch import nn


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """The device a test runs on: ``cpu`` always, ``cuda`` (marked ``cuda``) when present. The
    test moves its inputs there and its results back to the CPU for the oracle."""
    return request.param


@pytest.fixture
def read_events() -> Callable[[str | Path], object]:
    """``read_events(log_dir)``: the folder's TensorBoard events, loaded by TensorBoard's own
    ``EventAccumulator``, keeping every scalar, tensor and image (no sampling)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def load(log_dir: str | Path) -> EventAccumulator:
        accumulator = EventAccumulator(
            str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0}
        )
        accumulator.Reload()
        return accumulator

    return load


@pytest.fixture
def write_idx() -> Callable[[Path, np.ndarray], None]:
    """``write_idx(path, array)``: a gzipped IDX file of unsigned bytes, the MNIST format
    (magic ``0x0000``, type ``0x08``, the number of dims, big-endian dims, then the data)."""

    def write(path: Path, array: np.ndarray) -> None:
        header = struct.pack(">HBB", 0, 0x08, array.ndim)
        header += struct.pack(f">{array.ndim}I", *array.shape)
        with gzip.open(path, "wb") as handle:
            handle.write(header + array.astype(np.uint8).tobytes())

    return write


@pytest.fixture
def saved_module(tmp_path: Path) -> Path:
    """A seeded small conv net (conv 1->8 on 6x6 inputs, ReLU, linear 288->10) saved whole with
    ``torch.save`` (``model.pt``)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 10))
    path = tmp_path / "model.pt"
    torch.save(model, path)
    return path
