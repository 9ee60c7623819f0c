"""Layer discovery, geometry and probed input sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from svd_callback.layers import (
    estimate_cost,
    example_input_for,
    find_layers,
    matches,
    record_input_sizes,
)


class Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.grp = nn.Conv2d(8, 16, (3, 1), stride=2, padding=(1, 0), groups=2)
        self.up = nn.ConvTranspose2d(16, 4, 2, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.bn(self.up(self.grp(self.dw(self.c1(x)))))
        return self.fc(self.drop(h.mean((2, 3))))


def test_find_layers_kinds_geometry_and_skipped_reasons():
    specs, skipped = find_layers(Zoo())
    by_name = {s.name: s for s in specs}
    assert list(by_name) == ["c1", "dw", "grp", "up", "fc"]
    assert by_name["dw"].groups == 8 and by_name["dw"].dilation == (2, 2)
    assert by_name["grp"].stride == (2, 2) and by_name["grp"].groups == 2
    assert by_name["up"].kind == "conv_transpose2d" and by_name["up"].transposed
    assert by_name["fc"].kind == "linear" and not by_name["fc"].is_conv
    assert [(s.name, s.kind) for s in skipped] == [("emb", "Embedding")]
    assert "not a conv or linear layer" in skipped[0].reason


def test_lazy_modules_reported_until_materialised():
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(2))
    specs, skipped = find_layers(model)
    assert specs == [] and len(skipped) == 2
    assert all("lazy module not materialised" in s.reason for s in skipped)
    model(torch.zeros(1, 3, 6, 6))
    specs, skipped = find_layers(model)
    assert [s.kind for s in specs] == ["conv2d", "linear"] and skipped == []


def test_include_exclude_globs():
    assert matches("features.0", ["features.*"], None)
    assert not matches("classifier", ["features.*"], None)
    assert not matches("features.0", None, ["*.0"])
    specs, _ = find_layers(Zoo(), include=["c*", "fc"], exclude="c1")
    assert [s.name for s in specs] == ["fc"]


def test_record_input_sizes_restores_modes_and_rng():
    model = Zoo().train()
    model.drop.eval()  # a mixed state must come back exactly
    x = torch.randn(2, 3, 12, 10)
    rng = torch.get_rng_state()
    bn_mean = model.bn.running_mean.clone()
    sizes = record_input_sizes(model, x)
    assert sizes == {"c1": (12, 10), "dw": (12, 10), "grp": (12, 10), "up": (12, 10)}
    assert model.training and not model.drop.training and model.bn.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model.bn.running_mean, bn_mean)
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_removed_on_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(5, 2))
    with pytest.raises(RuntimeError):
        record_input_sizes(model, torch.zeros(1, 3, 8, 8))
    assert all(not m._forward_hooks for m in model.modules())


def test_example_input_and_cost_ordering():
    model = Zoo()
    x = example_input_for(model, 16)
    assert x.shape == (1, 3, 16, 16)
    specs, _ = find_layers(model)
    for spec in specs:
        for mode in ("unfold", "operator", "slices"):
            assert estimate_cost(spec, mode) > 0
    big = find_layers(nn.Conv2d(64, 64, 3))[0][0]
    small = find_layers(nn.Conv2d(8, 8, 3))[0][0]
    assert estimate_cost(big, "unfold") > estimate_cost(small, "unfold")
