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
