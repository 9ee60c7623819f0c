"""Layer discovery, geometry and probed input sizes."""

from __future__ import annotations

import math

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
    assert "embeddings are off" in skipped[0].reason
    assert "not a conv or linear layer" in find_layers(nn.Bilinear(2, 3, 4))[1][0].reason


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


# ------------------------------------------------------------------ attention and embeddings
def attention_oracle(mha: nn.MultiheadAttention, specs: dict, q, k, v) -> torch.Tensor:
    """Scaled dot-product attention written out from the q/k/v records' matrices and the
    module's biases (Vaswani et al. 2017, eq. 1), heads split along the embedding."""
    e, h = mha.embed_dim, mha.num_heads
    bias = mha.in_proj_bias if mha.in_proj_bias is not None else torch.zeros(3 * e)
    proj = [x @ specs[p].weight.T + bias[i * e : (i + 1) * e]
            for i, (p, x) in enumerate(zip("qkv", (q, k, v), strict=True))]
    heads = [t.reshape(t.shape[0], h, e // h).transpose(0, 1) for t in proj]  # (h, L, e/h)
    scores = heads[0] @ heads[1].transpose(1, 2) / math.sqrt(e // h)
    out = (scores.softmax(-1) @ heads[2]).transpose(0, 1).reshape(q.shape[0], e)
    return mha.out_proj(out)


@pytest.mark.parametrize("kdim, vdim", [(None, None), (6, 10)])
def test_multihead_attention_gives_q_k_v_and_out_proj(kdim, vdim):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("attn", nn.MultiheadAttention(8, 2, kdim=kdim, vdim=vdim))
    mha = model.attn
    specs, skipped = find_layers(model)
    assert skipped == []
    by_name = {s.name: s for s in specs}
    assert list(by_name) == ["attn.q", "attn.k", "attn.v", "attn.out_proj"]
    assert all(s.kind == "linear" and s.module_name in ("attn", "attn.out_proj") for s in specs)
    assert by_name["attn.k"].weight_shape == (8, kdim or 8)
    assert by_name["attn.v"].weight_shape == (8, vdim or 8)
    # the records' matrices are the attention's maps: the forward pass written out from them
    q, k, v = torch.randn(5, 8), torch.randn(7, kdim or 8), torch.randn(7, vdim or 8)
    expected, _ = mha(q, k, v, need_weights=False)
    got = attention_oracle(mha, {p: by_name[f"attn.{p}"] for p in "qkv"}, q, k, v)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # only the blocks named are selected; the module's name selects all three
    assert [s.name for s in find_layers(model, include="*.k")[0]] == ["attn.k"]
    assert [s.name for s in find_layers(model, include="attn")[0]] == ["attn.q", "attn.k",
                                                                       "attn.v"]
    assert [s.name for s in find_layers(model, exclude="attn")[0]] == ["attn.out_proj"]


def test_a_bare_multihead_attention_names_its_records_like_its_children():
    specs, _ = find_layers(nn.MultiheadAttention(4, 1))
    assert [s.name for s in specs] == ["q", "k", "v", "out_proj"]


def test_embeddings_are_opt_in_and_a_tied_weight_is_analysed_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(12, 4)
            self.pos = nn.Embedding(6, 4)
            self.head = nn.Linear(4, 12, bias=False)
            self.head.weight = self.emb.weight

    specs, skipped = find_layers(Tied())
    assert [s.name for s in specs] == ["head"]
    assert {s.name for s in skipped} == {"emb", "pos"}
    assert all("embeddings=True" in s.reason for s in skipped)
    specs, skipped = find_layers(Tied(), embeddings=True)
    assert [(s.name, s.kind, s.weight_shape) for s in specs] == [
        ("emb", "embedding", (12, 4)), ("pos", "embedding", (6, 4))]
    assert [(s.name, s.reason) for s in skipped] == [
        ("head", "weight shared with emb (tied), analysed there")]
    # excluded, the embedding no longer claims the weight: the head is analysed
    specs, skipped = find_layers(Tied(), exclude="emb", embeddings=True)
    assert [s.name for s in specs] == ["pos", "head"] and skipped == []


def test_a_linear_whose_weight_is_not_a_matrix_is_skipped_with_its_shape():
    from svd_callback.analysis import analyze

    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    model[1].weight = nn.Parameter(torch.zeros(2, 3, 1))
    specs, skipped = find_layers(model)
    assert [s.name for s in specs] == ["0"]
    assert [(s.name, s.reason) for s in skipped] == [("1", "weight of shape (2, 3, 1) is not a "
                                                           "matrix")]
    assert [r.reason is None for r in analyze(model, fit=None)] == [False, True]
