"""torchvision ``swin_t(weights=None)`` analysed end to end: every linear and the patch conv,
each packed ``qkv`` as its query, key and value blocks, and the shifted-window attention
modules (whose only own parameter is the relative-position bias table) reported with a reason.

Oracle: ``torch.linalg.svdvals`` in float64 of the row blocks ``[0, C)``, ``[C, 2C)``,
``[2C, 3C)`` of each ``qkv.weight``, the layout of ``ShiftedWindowAttention.forward``
(``qkv(x).reshape(B, L, 3, heads, C // heads)``).
"""

from __future__ import annotations

import pytest
import torch

from svd_callback.analysis import analyze
from svd_callback.config import AnalysisConfig

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None)
    return model, analyze(model, config=AnalysisConfig(metrics="norms"))


def test_swin_records_and_reasons(swin):
    model, report = swin
    qkv = [n for n, m in model.named_modules() if n.endswith(".qkv")]
    attn = [n for n, m in model.named_modules() if n.endswith(".attn")]
    linears = [n for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not n.endswith(".qkv")]
    assert len(qkv) == len(attn) == 12
    analysed = {r.name for r in report if r.reason is None}
    expected = {f"{n}.{p}" for n in qkv for p in "qkv"} | set(linears) | {"features.0.0"}
    assert analysed == expected and len(analysed) == 36 + 40 + 1
    skipped = {r.name: r.reason for r in report if r.reason is not None}
    assert set(skipped) == set(attn)
    assert all("relative_position_bias_table" in reason for reason in skipped.values())


def test_swin_qkv_blocks_match_svdvals(swin):
    model, report = swin
    records = {r.name: r for r in report}
    for name in ("features.1.0.attn.qkv", "features.7.1.attn.qkv"):
        weight = model.get_submodule(name).weight.detach().double()
        c = weight.shape[1]
        for i, part in enumerate("qkv"):
            block = weight[i * c:(i + 1) * c]
            svals = torch.linalg.svdvals(block)
            record = records[f"{name}.{part}"]
            assert record.shape == (c, c)
            assert record.metrics["spectral_norm"] == pytest.approx(float(svals[0]), rel=1e-6)
            assert record.metrics["frobenius_norm"] == pytest.approx(float(block.norm()), rel=1e-6)
