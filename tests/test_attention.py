"""Attention layers analysed as their query, key, value and output maps (torch, torchvision)."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from helpers import DigitsClassifier
from torch import nn

from svd_callback.analysis import analyze
from svd_callback.callback import SpectralMonitor
from svd_callback.examples import DigitsDataModule
from svd_callback.sinks.history import read_history


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


class DigitsTransformer(DigitsClassifier):
    """A digit image read as 8 tokens of 8 pixels: one encoder layer, mean-pooled, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x.reshape(-1, 8, 8))).mean(1))


def test_a_transformer_trains_with_the_monitor_and_the_class_analysis(tmp_path):
    pl.seed_everything(0, verbose=False)
    monitor = SpectralMonitor(figures_every_n=0, histograms=False,
                              class_analysis={"probe_size": 60, "top_k": 4})
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False,
                         callbacks=[monitor], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path, limit_train_batches=3, limit_val_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DigitsTransformer(), DigitsDataModule(batch_size=64))
    rows = [r for r in read_history(tmp_path / "spectral_history.jsonl") if r["type"] == "layer"]
    last = {r["layer"]: r for r in rows if r["epochs_trained"] == 2.0}
    attn = "encoder.self_attn"
    assert set(last) == {"embed", f"{attn}.q", f"{attn}.k", f"{attn}.v", f"{attn}.out_proj",
                         "encoder.linear1", "encoder.linear2", "head"}
    assert all(r["reason"] is None for r in last.values())
    assert "in_proj_weight[16:32]" in last[f"{attn}.k"]["notes"]["matrix"]
    # the class analysis hooks whole modules only: the q/k/v records are not offered to it
    # (their names are no modules); out_proj is, though the attention's fused path reads its
    # weight without calling it, which the class analysis reports
    classes = monitor.last_result.class_report
    assert classes is not None and "n_edges" in classes.layers["head"]
    assert not any(f"{attn}.{p}" in classes.layers for p in "qkv")
    assert not [r for r in classes.reasons.values() if "no module of this name" in r]
    assert not [w for w in caught if "no module of this name" in str(w.message)]
