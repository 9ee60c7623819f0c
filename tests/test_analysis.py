"""analyze(): records per layer and mode, batching, bad input, conventions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from svd_callback import analyze
from svd_callback.analysis import summarize
from svd_callback.spectra import operator_svdvals, slice_svdvals


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),  # same shape as the next one: batched together
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 64),
        nn.Linear(64, 10),
    )


def test_one_record_per_layer_and_mode_with_conventions(device):
    model = small_net().to(device)
    report = analyze(model, ["unfold", "operator", "slices"], input_size=8)
    assert all(r.svals.device.type == device for r in report)
    names = ["0", "2", "4", "6", "9", "10"]
    for mode in ("unfold", "operator", "slices"):
        records = report.by_mode(mode)
        assert [r.name for r in records] == names
        assert all(r.reason is None for r in records), [r.reason for r in records]
        assert all(r.normalization == "raw" and r.mode == mode for r in records)
    unfold = report.get("6", "unfold")
    assert unfold.matrix_shape == (72, 16)  # two groups of 16 x (8*3*3)
    assert unfold.svals.numel() == 32
    operator = report.get("6", "operator")
    assert operator.input_size == (8, 8)
    ref = operator_svdvals(model[6].weight, 8, stride=2, groups=2)
    torch.testing.assert_close(operator.svals, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(report.get("2", "slices").svals, slice_svdvals(model[2].weight))
    # linear layers are the same matrix in every mode
    assert torch.equal(report.get("9", "unfold").svals, report.get("9", "slices").svals)
    frame = report.to_dataframe()
    assert {"layer", "mode", "normalization", "alpha", "stable_rank", "quality"} <= set(frame)
    assert len(frame) == 18


def test_metrics_are_consistent_with_the_spectrum(device):
    report = analyze(small_net().to(device))
    for record in report.analysed():
        eigs = record.svals.cpu().double() ** 2
        m = record.metrics
        assert math.isclose(m["spectral_norm"], float(eigs[0].sqrt()), rel_tol=1e-6)
        assert math.isclose(m["frobenius_norm"], float(eigs.sum().sqrt()), rel_tol=1e-6)
        assert math.isclose(m["stable_rank"], float(eigs.sum() / eigs[0]), rel_tol=1e-6)
        assert math.isclose(m["log_norm"], math.log10(float(eigs.sum())), rel_tol=1e-6)


def test_summary_per_mode():
    summary = summarize(analyze(small_net(), ["unfold", "slices"]))
    assert set(summary) == {"unfold", "slices"}
    assert summary["unfold"]["n_layers"] == 6
    assert math.isfinite(summary["unfold"]["stable_rank_mean"])


def test_nan_reasons_name_each_undetermined_fit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.Linear(128, 10))
    report = analyze(model)
    assert math.isfinite(report.get("0").metrics["alpha"])
    assert report.nan_reasons("alpha") == [
        "1 [unfold] alpha = nan: too few eigenvalues for a tail fit (10 < 20)"]
    assert report.nan_reasons("not_a_metric") == []
    assert analyze(model, metrics="norms").nan_reasons("alpha") == []


def test_model_is_untouched():
    model = small_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    analyze(model, ["unfold", "operator", "slices"], input_size=8, metrics="all")
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_traps_use_a_private_generator_and_are_reproducible():
    a = analyze(small_net(), metrics=("norms", "powerlaw", "traps"), generator_seed=3)
    b = analyze(small_net(), metrics=("norms", "powerlaw", "traps"), generator_seed=3)
    for ra, rb in zip(a, b, strict=True):
        assert ra.metrics.keys() >= {"num_traps", "rand_distance"}
        assert ra.metrics["num_traps"] == rb.metrics["num_traps"]


class Empty(nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_upcast(dtype):
    model = small_net().to(dtype)
    report = analyze(model)
    assert all(r.svals.dtype == torch.float32 for r in report.analysed())
    assert len(report.analysed()) == 6


def test_bad_input_gives_reasons_not_exceptions():
    assert list(analyze(Empty())) == []
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),  # NaN
        nn.Conv2d(8, 8, 1),  # 1x1 conv
        nn.Conv2d(8, 8, 3),  # zero weight
        nn.Flatten(),
        nn.Linear(8, 1),  # one output
        nn.Embedding(4, 3),
    )
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
        model[0].weight[1, 0, 0, 0] = float("inf")
        model[2].weight.zero_()
    report = analyze(model, ["unfold", "operator", "slices"])
    nan_layer = report.get("0", "unfold")
    assert nan_layer.reason == "weight has non-finite entries (1 NaN, 1 Inf)"
    assert "input size" in report.get("1", "operator").reason  # no input size given
    one_by_one = report.get("1", "unfold")
    assert one_by_one.reason is None and one_by_one.svals.numel() == 8
    zero = report.get("2", "unfold")
    assert zero.reason is None and math.isnan(zero.metrics["alpha"]) and zero.notes
    single = report.get("4", "unfold")
    assert single.svals.numel() == 1 and math.isnan(single.metrics["alpha"])
    assert "embeddings are off" in report.get("5", "unfold").reason  # opt-in: embeddings=True


def test_operator_mode_reports_a_failed_probe():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(3, 2))  # forward fails on images
    record = analyze(model, "operator", input_size=8).get("0")
    assert record.reason.startswith("probe forward pass failed")


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="conv_mode"):
        analyze(small_net(), "fft")
    with pytest.raises(ValueError, match="normalization"):
        analyze(small_net(), normalization="l2")
    with pytest.raises(ValueError, match="fit"):
        analyze(small_net(), fit="mle")
