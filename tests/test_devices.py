"""The solver and the analysis on every available device (the ``device`` fixture: CPU always,
CUDA when present).

Oracle: float64 ``torch.linalg.svdvals`` on the CPU. ``svd_method="auto"`` is float64 Gram on the
CPU and float32 ``svdvals`` on accelerators, whose error is ~ eps32 * sigma_max (backward
stability), so 1e-5 sigma_max bounds both with margin.
"""

from __future__ import annotations

import pytest
import torch

from svd_callback.analysis import analyze
from svd_callback.config import AnalysisConfig
from svd_callback.spectra.solver import auto_method, batched_svdvals


@pytest.mark.parametrize("dtype, device, expected", [
    (torch.float32, "cpu", "gram"), (torch.float64, "cpu", "svd"), (torch.complex64, "cpu", "svd"),
    (torch.float32, "cuda", "svd"), (torch.float32, "mps", "svd"), (torch.float32, "xpu", "svd"),
])
def test_auto_method_per_device(dtype, device, expected):
    assert auto_method(dtype, device) == expected


def test_auto_svdvals_match_float64(device):
    gen = torch.Generator().manual_seed(0)
    mats = torch.randn(3, 96, 40, generator=gen)
    exact = torch.linalg.svdvals(mats.double())
    got = batched_svdvals(mats.to(device)).cpu().double()
    assert got.device.type == "cpu" and got.shape == exact.shape
    assert (got - exact).abs().max() <= 1e-5 * exact.max()


def test_analysis_on_device_matches_cpu_oracle(device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 50), torch.nn.Linear(50, 10))
    expected = {name: torch.linalg.svdvals(m.weight.detach().double().flatten(1))
                for name, m in model.named_modules() if hasattr(m, "weight")}
    report = analyze(model.to(device), config=AnalysisConfig(metrics="norms"))
    assert {r.name for r in report} == set(expected)
    for record in report:
        assert record.reason is None
        svals = expected[record.name]
        assert record.metrics["spectral_norm"] == pytest.approx(float(svals[0]), rel=1e-5)
        assert record.metrics["frobenius_norm"] == pytest.approx(float(svals.norm()), rel=1e-5)


def test_analysis_leaves_weights_untouched(device):
    # a layer alone in its shape group is handed to the solvers as a view of its weight
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 8 * 8, 30)).to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, config=AnalysisConfig(metrics="all", input_size=8,
                                         conv_mode=("unfold", "slices", "operator")))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
