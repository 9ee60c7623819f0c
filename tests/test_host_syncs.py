"""Host transfers of an analysis: the weights' finiteness check moves one stacked tensor to the
host, whatever the number of layers (before: one ``.cpu()`` per layer, a device synchronisation
each on CUDA). Counted on the CPU by patching ``torch.Tensor.cpu``."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from svd_callback.analysis import _nonfinite_reasons
from svd_callback.layers import find_layers


def _specs(n: int):
    model = torch.nn.Sequential(*[torch.nn.Linear(10 + i, 11 + i) for i in range(n)])
    specs, _ = find_layers(model)
    return model, specs


@pytest.mark.parametrize("n", [2, 7])
def test_finiteness_check_transfers_once(n):
    model, specs = _specs(n)
    with torch.no_grad():
        model[n - 1].weight[0, 0] = float("nan")
    calls = []
    original = torch.Tensor.cpu

    def counted(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    with mock.patch.object(torch.Tensor, "cpu", counted):
        reasons = _nonfinite_reasons(specs)
    assert calls == [(n,)]
    assert list(reasons) == [f"{n - 1}"] and "1 NaN" in reasons[f"{n - 1}"]


# ---------------------------------------------------------------------------- one analysis
_HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
               torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
               torch.Tensor.__index__}
"""The ways a tensor's values reach Python: each a device synchronisation on an accelerator."""


class _OnDevice(torch.Tensor):
    """A CPU tensor standing for one on an accelerator: what is computed from it stays of this
    type, and every read of its values on the host is counted (and gives a plain tensor)."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            cls.reads.append(func.__name__)
            with torch._C.DisableTorchFunctionSubclass():
                plain = [a.as_subclass(torch.Tensor) if isinstance(a, cls) else a for a in args]
                return func(*plain, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


def _model_on_device(n: int) -> torch.nn.Module:
    """n layers of distinct shapes (every one its own solver batch): convs and linears."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3 + i, 4 + i, 3) if i % 2 else torch.nn.Linear(20 + i, 24 + i)
              for i in range(n)]
    for layer in layers:
        layer.weight = torch.nn.Parameter(layer.weight.detach().as_subclass(_OnDevice))
    return torch.nn.ModuleList(layers)


@pytest.mark.parametrize("n", [6, 12])
def test_one_analysis_reads_the_host_once_per_mode(n):
    from svd_callback.analysis import analyze
    from svd_callback.config import AnalysisConfig

    modes = ("unfold", "slices")
    config = AnalysisConfig(metrics="all", conv_mode=modes, svd_method="svd")
    _OnDevice.reads = []
    report = analyze(_model_on_device(n), config=config)
    # the finiteness check of every weight, then one transfer of the spectra per mode; before:
    # 199 reads for 6 layers and 397 for 12 in unfold mode alone (solver checks, RMT floats)
    assert _OnDevice.reads == ["cpu"] * (1 + len(modes))
    assert len(report) == n * len(modes) and all(r.reason is None for r in report)
    assert all(isinstance(r.svals, _OnDevice) for r in report)  # kept on their device
    plain = _model_on_device(n)
    for layer in plain:
        layer.weight = torch.nn.Parameter(layer.weight.detach().as_subclass(torch.Tensor))
    expected = analyze(plain, config=config)
    for got, want in zip(report, expected, strict=True):
        assert got.metrics.keys() == want.metrics.keys()
        assert all(got.metrics[k] == want.metrics[k] or (got.metrics[k] != got.metrics[k]
                   and want.metrics[k] != want.metrics[k]) for k in want.metrics)


def test_to_host_moves_each_device_and_dtype_once():
    from svd_callback.transfer import to_host

    gen = torch.Generator().manual_seed(0)
    plain = [torch.rand(4, generator=gen), None, torch.rand(2, 3, generator=gen),
             torch.rand(5, generator=gen).double(), torch.rand(1, generator=gen)]
    _OnDevice.reads = []
    moved = to_host([None if t is None else t.as_subclass(_OnDevice) for t in plain])
    assert _OnDevice.reads == ["cpu", "cpu"]  # float32 and float64: one transfer each
    assert moved[1] is None
    for got, want in zip(moved, plain, strict=True):
        if want is not None:
            assert type(got) is torch.Tensor and got.dtype == want.dtype
            assert torch.equal(got, want)


@pytest.mark.parametrize("n", [3, 9])
def test_gathered_records_move_their_spectra_once(n, device, monkeypatch):
    from svd_callback.distributed import _to_cpu
    from svd_callback.report import LayerReport, Report

    gen = torch.Generator().manual_seed(n)
    spectra = [torch.rand(5 + i, generator=gen).sort(descending=True).values for i in range(n)]
    report = Report([LayerReport(f"l{i}", "linear", "unfold", svals=s.to(device))
                     for i, s in enumerate(spectra)]
                    + [LayerReport("skipped", "linear", "unfold", reason="x")])
    moves = []
    original = torch.Tensor.cpu

    def counted(self, *args, **kwargs):
        moves.append(self.device.type)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counted)
    moved = _to_cpu(report)
    # before: one .cpu() per record on an accelerator; CPU records are kept as they are
    assert moves == ([] if device == "cpu" else [device])
    assert moved[n].svals is None
    for record, original_record, expected in zip(moved, report, spectra, strict=False):
        assert record.svals.device.type == "cpu" and torch.equal(record.svals, expected)
        if device == "cpu":
            assert record is original_record
        else:  # a clone, not a view of the moved buffer (which would be pickled whole)
            assert record.svals.untyped_storage().nbytes() == expected.numel() * 4
