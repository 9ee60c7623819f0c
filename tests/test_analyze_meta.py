"""analyze on a model whose weights are (partly) on the meta device: skipped with a reason."""

from __future__ import annotations

import torch
from torch import nn

from svd_callback import analyze


def test_meta_layers_are_skipped_and_real_layers_analysed():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 10))
    torch.manual_seed(0)
    model[2] = nn.Linear(8, 10)  # one materialised layer beside a meta one
    report = analyze(model, ["unfold", "operator"], input_size=3)
    by_key = {(r.name, r.mode): r for r in report}
    assert set(by_key) == {("0", "unfold"), ("0", "operator"), ("2", "unfold"), ("2", "operator")}
    for mode in ("unfold", "operator"):
        assert by_key["0", mode].reason.startswith("weight is on the meta device")
        assert by_key["0", mode].metrics == {}
        linear = by_key["2", mode]
        assert linear.reason is None
        expected = torch.linalg.matrix_norm(model[2].weight.detach().double(), ord=2)
        # the spectra are computed from float32 weights
        assert abs(linear.metrics["spectral_norm"] - float(expected)) < 1e-6 * float(expected)
