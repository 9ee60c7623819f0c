"""``normalization="per_row"`` against DeepDataProfiler 2.0.1's formula.

The oracle transcribes ``SpectralAnalysis.spectral_analysis`` of deep-data-profiler 2.0.1
(``algorithms/spectral_analysis.py``): ``X = W.flatten(1)``, ``sigma = torch.svd(X).S``,
``eigenvalues = sigma * sigma / len(X)``. DeepDataProfiler has no grouped convs; a grouped conv
is the same formula on each group's block ``W[g*d/G:(g+1)*d/G].flatten(1)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from svd_callback import analyze
from svd_callback.report import eig_scale


def ddp_eigenvalues(weight: torch.Tensor, groups: int = 1) -> np.ndarray:
    """DeepDataProfiler's lambda of each group's flattened weight, descending."""
    out = []
    for block in weight.detach().double().chunk(groups, dim=0):
        x = torch.flatten(block, start_dim=1)
        sigma = torch.svd(x, compute_uv=True).S.numpy()
        out.append(sigma * sigma / len(x))
    return np.sort(np.concatenate(out))[::-1]


@pytest.mark.parametrize(
    "module, rows",
    [
        (nn.Conv2d(3, 8, 3), 8),  # 8 x 27: rows are the short side
        (nn.Conv2d(16, 6, 3), 6),  # 6 x 144
        (nn.Conv2d(8, 12, 3, groups=4), 3),  # per group 3 x 18
        (nn.Linear(40, 24), 24),  # out_features < in_features
        (nn.Linear(10, 30), 30),  # out_features > in_features
    ],
)
def test_per_row_eigenvalues_equal_deepdataprofilers(module: nn.Module, rows: int) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    record = analyze(nn.Sequential(module), "unfold", normalization="per_row",
                     metrics="norms").analysed()[0]
    assert record.rows == rows
    ours = record.eigenvalues.numpy()
    expected = ddp_eigenvalues(module.weight, getattr(module, "groups", 1))
    np.testing.assert_allclose(ours, expected[: len(ours)], rtol=1e-5, atol=1e-9)


def test_per_row_rows_of_operator_and_slices() -> None:
    conv = nn.Conv2d(4, 10, 3, padding=1, groups=2)
    report = analyze(nn.Sequential(conv), ("operator", "slices"), normalization="per_row",
                     metrics="norms", input_size=6)
    assert report.get("0", "operator").rows == 5  # one group's per-frequency block
    assert report.get("0", "slices").rows == 10  # one whole kh x kw slice, 10 x 2
    slices = report.get("0", "slices")
    np.testing.assert_allclose(slices.eigenvalues.numpy(),
                               slices.svals.double().numpy() ** 2 / 10, rtol=1e-12)


def test_eig_scale_per_row_needs_rows() -> None:
    assert eig_scale("conv2d", "per_row", 4) == 0.25
    with pytest.raises(ValueError, match="per_row needs the rows"):
        eig_scale("linear", "per_row", None)
