"""Attention layers analysed as their query, key, value and output maps (torch, torchvision)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from svd_callback.analysis import analyze


def oracle(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.detach().double())


@pytest.mark.parametrize("separate", [False, True])
def test_multihead_attention_spectra_match_the_sliced_matrices(separate):
    torch.manual_seed(0)
    e = 12
    kdim = 9 if separate else None
    model = nn.Sequential()
    model.add_module("attn", nn.MultiheadAttention(e, 3, kdim=kdim, vdim=kdim))
    report = analyze(model, fit=None)
    got = {r.name: r for r in report}
    assert list(got) == ["attn.q", "attn.k", "attn.v", "attn.out_proj"]
    mha = model.attn
    if separate:
        matrices = [mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]
    else:
        w = mha.in_proj_weight
        matrices = [w[:e], w[e : 2 * e], w[2 * e :]]
    for part, matrix in zip("qkv", matrices, strict=True):
        record = got[f"attn.{part}"]
        assert record.reason is None and record.shape == tuple(matrix.shape)
        torch.testing.assert_close(record.svals.double(), oracle(matrix), rtol=1e-5, atol=1e-7)
        assert "MultiheadAttention attn." in record.notes["matrix"]
    torch.testing.assert_close(got["attn.out_proj"].svals.double(),
                               oracle(mha.out_proj.weight), rtol=1e-5, atol=1e-7)


def test_torchvision_vision_transformer_end_to_end():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2,
                                                 num_heads=2, hidden_dim=16, mlp_dim=32,
                                                 num_classes=5)
    report = analyze(model, fit=None)
    analysed = {r.name: r for r in report if r.reason is None}
    for i in range(2):
        prefix = f"encoder.layers.encoder_layer_{i}"
        for name in (".self_attention.q", ".self_attention.k", ".self_attention.v",
                     ".self_attention.out_proj", ".mlp.0", ".mlp.3"):
            assert prefix + name in analysed
        mha = model.encoder.layers[i].self_attention
        torch.testing.assert_close(analysed[prefix + ".self_attention.v"].svals.double(),
                                   oracle(mha.in_proj_weight[32:]), rtol=1e-5, atol=1e-7)
    assert "conv_proj" in analysed and "heads.head" in analysed
    assert len(analysed) == 1 + 2 * 6 + 1
    skipped = {r.name: r.reason for r in report if r.reason is not None}
    # the position embedding and class token parameters, with their reasons
    assert set(skipped) == {"encoder", "visiontransformer"}
    assert "pos_embedding" in skipped["encoder"]
    assert "class_token" in skipped["visiontransformer"]
