"""``LayerReport.reason_code``: each way a layer is skipped is built here on purpose and must
carry its documented code (``svd_callback.report.REASON_CODES``); analysed layers carry none; the
command line's operator input-size error reads the code, not the reason's wording."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from svd_callback.analysis import analyze
from svd_callback.cli import UsageError, _check_sized_convs
from svd_callback.config import AnalysisConfig
from svd_callback.report import REASON_CODES, LayerReport


class _Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.strided = nn.Conv2d(3, 4, 3, stride=2, padding=1)  # 5 is not divisible by 2
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.nan = nn.Linear(6, 6)
        self.head = nn.Linear(6, 6)
        self.tied = nn.Linear(6, 6)
        self.tied.weight = self.head.weight
        self.embed = nn.Embedding(10, 6)
        self.bilinear = nn.Bilinear(3, 3, 2)
        with torch.no_grad():
            self.nan.weight[0, 0] = float("nan")


def _codes(report, mode):
    return {r.name: r.reason_code for r in report.by_mode(mode)}


def test_every_skip_carries_its_code():
    torch.manual_seed(0)
    model = _Zoo()
    report = analyze(model, config=AnalysisConfig(conv_mode=("unfold", "operator")),
                     input_sizes={"strided": (5, 5)})
    unfold, operator = _codes(report, "unfold"), _codes(report, "operator")
    assert unfold == {"strided": None, "conv": None, "nan": "nonfinite_weight", "head": None,
                      "tied": "tied_weight", "embed": "embeddings_off",
                      "bilinear": "unsupported_module"}
    assert operator == {**unfold, "strided": "input_size_stride", "conv": "input_size_missing"}
    for record in report:
        assert (record.reason is None) == (record.reason_code is None), record
        assert record.reason_code is None or record.reason_code in REASON_CODES
    assert report.get("strided", "operator").as_row()["reason_code"] == "input_size_stride"


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_lazy_meta_empty_and_weightwatcher_limits():
    lazy = nn.Sequential(nn.LazyLinear(4))
    assert _codes(analyze(lazy), "unfold") == {"0": "lazy_module"}
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(4, 4))
    assert _codes(analyze(meta), "unfold") == {"0": "meta_weight"}
    empty = nn.Sequential(nn.Linear(0, 4))
    assert _codes(analyze(empty), "unfold") == {"0": "empty_weight"}
    small = nn.Sequential(nn.Linear(4, 4))  # 4 eigenvalues: below WeightWatcher's minimum
    assert _codes(analyze(small, config=AnalysisConfig(ww_compat=True)),
                  "unfold") == {"0": "ww_size_limit"}


def test_solver_failure_code(monkeypatch):
    import svd_callback.spectra.modes as modes

    def broken(*args, **kwargs):
        raise RuntimeError("solver broke")

    monkeypatch.setattr(modes, "stacked_unfold_svdvals", broken)
    report = analyze(nn.Sequential(nn.Linear(5, 5)))
    assert _codes(report, "unfold") == {"0": "svd_failed"}


def test_unknown_code_is_refused():
    with pytest.raises(ValueError, match="reason_code"):
        LayerReport("fc", "linear", "unfold", reason="x", reason_code="typo")


def _conv(reason, code):
    return LayerReport("c", "conv2d", "operator", reason=reason, reason_code=code)


def test_cli_operator_error_reads_the_code_not_the_wording():
    # the code decides: a conv skipped for its input size, whatever the words
    with pytest.raises(UsageError, match="none of the 1 conv layers"):
        _check_sized_convs([_conv("stride does not divide", "input_size_stride")], "operator", (5,))
    # a solver failure whose message happens to say "input size" is not an input-size error
    _check_sized_convs([_conv("SVD failed: bad input size in kernel", "svd_failed")], "operator",
                       (5,))
    _check_sized_convs([_conv(None, None)], "operator", (5,))
