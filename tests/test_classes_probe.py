"""Probe selection (stratified, deterministic, own RNG) and one-pass activation capture."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from svd_callback.classes import ProbeSet, capture_activations, dataset_labels, select_probe


def _water_fill(counts: dict[int, int], size: int) -> dict[int, int]:
    """Reference quotas: repeatedly give one example to every class that still has some."""
    quota = dict.fromkeys(counts, 0)
    remaining = min(size, sum(counts.values()))
    while remaining:
        for c in sorted(counts):
            if remaining and quota[c] < counts[c]:
                quota[c] += 1
                remaining -= 1
    return quota


@settings(max_examples=25, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=0, max_size=80),
    size=st.integers(0, 90),
    seed=st.integers(0, 2**31),
)
def test_probe_is_stratified_like_water_filling(labels, size, seed):
    labels_t = torch.tensor(labels, dtype=torch.int64)
    indices = select_probe(labels_t, size, seed)
    assert indices.dtype == torch.int64
    assert len(set(indices.tolist())) == indices.numel() == min(size, len(labels))
    chosen = Counter(labels_t[indices].tolist())
    expected = _water_fill(Counter(labels), size)
    assert {c: chosen.get(c, 0) for c in expected} == expected


def test_prefix_is_balanced_and_round_robin():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    indices = select_probe(labels, size=30, seed=3)
    assert labels[indices[:6]].tolist() == [0, 1, 2, 0, 1, 2]
    assert Counter(labels[indices].tolist()) == {0: 10, 1: 10, 2: 10}


def test_deterministic_per_seed_and_global_rng_untouched():
    labels = torch.arange(200) % 10
    state = torch.get_rng_state()
    first = select_probe(labels, 64, seed=11)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(first, select_probe(labels, 64, seed=11))
    assert not torch.equal(first, select_probe(labels, 64, seed=12))


def test_absent_and_small_classes():
    labels = torch.tensor([0] * 10 + [3] * 2 + [5] * 10)  # classes 1, 2, 4 absent
    indices = select_probe(labels, size=12)
    assert Counter(labels[indices].tolist()) == {0: 5, 3: 2, 5: 5}
    assert select_probe(torch.tensor([], dtype=torch.int64), 5).numel() == 0
    with pytest.raises(ValueError):
        select_probe(labels, -1)


class _LabelCountingDataset(Dataset):
    """A dataset that counts how often it is asked for an item."""

    def __init__(self, n: int, with_targets: bool):
        self.x = torch.arange(n, dtype=torch.float32).reshape(n, 1).expand(n, 3).clone()
        self.y = torch.arange(n) % 4
        if with_targets:
            self.targets = self.y.tolist()
        self.calls = 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        self.calls += 1
        return self.x[i], int(self.y[i])


def test_from_dataset_reads_targets_without_loading_inputs():
    dataset = _LabelCountingDataset(40, with_targets=True)
    probe = ProbeSet.from_dataset(dataset, size=8, seed=0)
    assert dataset.calls == 8
    assert len(probe) == 8
    assert torch.equal(probe.inputs[:, 0].long(), probe.indices)
    assert torch.equal(probe.labels, probe.indices % 4)
    assert Counter(probe.labels.tolist()) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_from_dataset_fallback_subset_and_tensor_dataset():
    plain = _LabelCountingDataset(12, with_targets=False)
    probe = ProbeSet.from_dataset(plain, size=4)
    assert plain.calls == 12 + 4
    assert Counter(probe.labels.tolist()) == {0: 1, 1: 1, 2: 1, 3: 1}
    tensors = TensorDataset(torch.randn(20, 2), torch.arange(20) % 5)
    assert torch.equal(dataset_labels(tensors), torch.arange(20) % 5)
    subset = Subset(_LabelCountingDataset(40, with_targets=True), [1, 2, 5, 9])
    assert dataset_labels(subset).tolist() == [1, 2, 1, 1]


def test_from_dataloader_is_stratified_and_bounded():
    dataset = TensorDataset(torch.arange(100.0).reshape(100, 1), torch.arange(100) % 5)
    loader = DataLoader(dataset, batch_size=16, shuffle=False)
    probe = ProbeSet.from_dataloader(loader, size=10, seed=0)
    assert Counter(probe.labels.tolist()) == dict.fromkeys(range(5), 2)
    assert torch.equal(probe.inputs[:, 0].long(), probe.indices)
    # only the first 2 batches read: positions 0..31
    limited = ProbeSet.from_dataloader(loader, size=10, seed=0, max_batches=2)
    assert int(limited.indices.max()) < 32


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def test_capture_matches_a_manual_forward_and_removes_hooks():
    torch.manual_seed(0)
    model = _model().eval()
    x = torch.randn(10, 1, 8, 8)
    captured = capture_activations(model, x, ["0", "2", "7"], batch_size=4)
    with torch.no_grad():
        conv0 = model[0](x)
        # the in-place ReLU after conv 0 must not leak into the recorded output
        expected_conv0 = conv0.clone()
        relu0 = torch.relu(conv0)
        conv2 = model[2](relu0)
        features = torch.flatten(model[5](model[4](model[3](conv2))), 1)
    torch.testing.assert_close(captured["0"][1], expected_conv0)
    assert (captured["0"][1] < 0).any()
    torch.testing.assert_close(captured["2"][0], relu0)
    torch.testing.assert_close(captured["2"][1], conv2)
    torch.testing.assert_close(captured["7"][0], features)
    assert captured["7"][1].shape == (10, 3)
    assert all(not m._forward_hooks for m in model.modules())
    assert not captured["7"][1].requires_grad


def test_capture_keeps_mode_and_cleans_up_on_error():
    model = _model().train()
    captured = capture_activations(model, torch.randn(4, 1, 8, 8), ["2"], keep="input")
    assert captured["2"][1] is None and captured["2"][0].shape == (4, 4, 8, 8)
    assert model.training and all(m.training for m in model.modules())
    with pytest.raises(RuntimeError):
        capture_activations(model, torch.randn(4, 2, 8, 8), ["0", "2"])
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="unknown layer"):
        capture_activations(model, torch.randn(4, 1, 8, 8), ["nope"])


# ------------------------------------------------------------------ reading batches
def test_read_batch_finds_inputs_targets_and_the_dict_key():
    from svd_callback.classes import read_batch

    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 1])
    assert read_batch((x, y)) == (x, y, None)
    assert read_batch([x, y, torch.ones(4)]) == (x, y, None)  # extra items ignored
    assert read_batch((x,)) == (x, None, None)
    assert read_batch([]) == (None, None, None)
    assert read_batch(x) == (x, None, None)  # a bare input
    assert read_batch({"id": y, "pixel_values": x, "labels": y}) == (x, y, "pixel_values")
    assert read_batch({"tokens": x, "mask": y}) == (x, None, "tokens")  # else the first key
    assert read_batch({}) == (None, None, None)
    parts = read_batch({"image": x, "target": y})
    assert parts.inputs is x and parts.targets is y and parts.key == "image"


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"tokens": torch.zeros(2, 1), "label": torch.zeros(2)}, "input key"),
        ({"x": torch.zeros(2, 1)}, "target key"),
        ((torch.zeros(2, 1),), "cannot read"),
        (torch.zeros(2, 1), "cannot read"),
    ],
)
def test_strict_reading_needs_inputs_and_targets(batch, message):
    from svd_callback.classes import ProbeError, read_batch

    with pytest.raises(ProbeError, match=message):
        read_batch(batch, strict=True)


class _DictBatches(Dataset):
    def __init__(self, n: int, float_targets: bool = False) -> None:
        self.n, self.float_targets = n, float_targets

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        label = float(i % 3) if self.float_targets else i % 3
        return {"image": torch.full((2,), float(i)), "label": torch.tensor(label)}


def test_from_dataloader_reads_dict_batches_and_refuses_non_class_targets():
    from svd_callback.classes import ProbeError

    probe = ProbeSet.from_dataloader(DataLoader(_DictBatches(30), batch_size=8), size=9)
    assert Counter(probe.labels.tolist()) == {0: 3, 1: 3, 2: 3}
    assert torch.equal(probe.inputs[:, 0].long(), probe.indices)  # input i holds i
    with pytest.raises(ProbeError, match="not integer class labels"):
        ProbeSet.from_dataloader(DataLoader(_DictBatches(30, float_targets=True), batch_size=8))
