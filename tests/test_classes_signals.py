"""SVD-neuron signals: s_i = u_i^T (y_p - b) = sigma_i <v_i, x_p>, checked on real layers.

The oracle is the layer's own forward output y (minus its bias) projected on the left singular
vectors of the unfolded weight, averaged over positions; and, independently, the mean of the
explicit ``F.unfold`` patches.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from svd_callback.classes import ConvParams, class_mean_signals, neuron_signals
from svd_callback.spectra import unfold_svd


def _output_side_signals(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(I, g*r) mean over positions of u_i^T (y_p - b), neurons in (group, index) order."""
    with torch.no_grad():
        y = layer(x)
    groups = getattr(layer, "groups", 1)
    U, S, _ = unfold_svd(layer.weight.detach(), groups)
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.weight.shape[0])
    if isinstance(layer, nn.Linear):
        centred = (y - bias).reshape(y.shape[0], -1, y.shape[-1]).mean(dim=1)  # (I, d)
    else:
        centred = (y - bias.reshape(1, -1, *([1] * (y.dim() - 2)))).flatten(2).mean(dim=2)
    centred = centred.reshape(x.shape[0], groups, -1)  # (I, g, d/g)
    return torch.einsum("igo,gor->igr", centred, U).reshape(x.shape[0], -1)


def _sorted_by_sigma(layer: nn.Module, values: torch.Tensor) -> torch.Tensor:
    _, S, _ = unfold_svd(layer.weight.detach(), getattr(layer, "groups", 1))
    order = torch.sort(S.reshape(-1), descending=True, stable=True).indices
    return values[:, order]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=3, out_channels=8, kernel_size=3, padding=1, stride=2),
        dict(in_channels=4, out_channels=6, kernel_size=(3, 2), padding=(2, 0), stride=(1, 2)),
        dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2, groups=2),
        dict(in_channels=3, out_channels=5, kernel_size=3, padding="same", padding_mode="reflect"),
        dict(in_channels=2, out_channels=4, kernel_size=2, padding="valid", bias=False),
        dict(in_channels=3, out_channels=5, kernel_size=(2, 4), padding="same", dilation=(1, 2)),
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv2d_signals_equal_output_projection(kwargs):
    torch.manual_seed(0)
    layer = nn.Conv2d(**kwargs)
    x = torch.randn(5, kwargs["in_channels"], 9, 10)
    result = neuron_signals(layer.weight, x, layer)
    assert result.reason is None
    expected = _sorted_by_sigma(layer, _output_side_signals(layer, x))
    torch.testing.assert_close(result.values, expected, rtol=1e-4, atol=1e-5)
    # sigma descending, one per neuron
    assert torch.all(result.sigma[:-1] >= result.sigma[1:])


def test_conv2d_signals_equal_mean_unfold_patch():
    torch.manual_seed(1)
    layer = nn.Conv2d(3, 7, kernel_size=3, padding=1, stride=2, dilation=1)
    x = torch.randn(4, 3, 11, 8)
    patches = F.unfold(x, kernel_size=3, padding=1, stride=2)  # (I, c*k*k, L)
    mean_patch = patches.mean(dim=2)
    _, S, Vh = unfold_svd(layer.weight.detach())
    expected = (mean_patch @ Vh[0].T) * S[0]
    result = neuron_signals(layer.weight, x, ConvParams.from_module(layer), top_k=4)
    torch.testing.assert_close(result.values, expected[:, :4], rtol=1e-4, atol=1e-5)
    assert result.values.shape == (4, 4)


@pytest.mark.parametrize("conv", [nn.Conv1d(3, 6, 5, padding=2, stride=2), nn.Conv3d(2, 4, 3)])
def test_conv1d_and_conv3d_signals(conv):
    torch.manual_seed(2)
    spatial = (17,) if isinstance(conv, nn.Conv1d) else (5, 6, 7)
    x = torch.randn(3, conv.in_channels, *spatial)
    result = neuron_signals(conv.weight, x, conv)
    expected = _sorted_by_sigma(conv, _output_side_signals(conv, x))
    torch.testing.assert_close(result.values, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra", [(), (7,)])
def test_linear_signals_equal_output_projection(extra):
    torch.manual_seed(3)
    layer = nn.Linear(12, 5)
    x = torch.randn(6, *extra, 12)
    result = neuron_signals(layer.weight, x, None, top_k=3)
    expected = _sorted_by_sigma(layer, _output_side_signals(layer, x))[:, :3]
    torch.testing.assert_close(result.values, expected, rtol=1e-4, atol=1e-5)
    # and directly: sigma_i <v_i, x>
    _, S, Vh = unfold_svd(layer.weight.detach())
    direct = (x.reshape(6, -1, 12).mean(1) @ Vh[0].T * S[0])[:, :3]
    torch.testing.assert_close(result.values, direct, rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(
    channels=st.integers(1, 4),
    out=st.integers(1, 6),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    size=st.integers(3, 8),
    top_k=st.one_of(st.none(), st.integers(0, 30)),
)
def test_signal_shapes(channels, out, kernel, stride, padding, size, top_k):
    layer = nn.Conv2d(channels, out, kernel, stride=stride, padding=padding)
    x = torch.rand(2, channels, size, size)
    result = neuron_signals(layer.weight, x, layer, top_k=top_k)
    n_neurons = min(out, channels * kernel * kernel)
    k = n_neurons if top_k is None else min(top_k, n_neurons)
    assert result.values.shape == (2, k)
    assert result.sigma.shape == (k,)
    assert result.reason is None
    assert torch.isfinite(result.values).all()


def test_non_finite_weight_gives_nan_and_reason():
    layer = nn.Conv2d(2, 3, 3)
    weight = layer.weight.detach().clone()
    weight[0, 0, 0, 0] = math.nan
    result = neuron_signals(weight, torch.randn(4, 2, 6, 6), layer, top_k=2)
    assert result.values.shape == (4, 2)
    assert torch.isnan(result.values).all()
    assert "non-finite" in result.reason


def test_mismatched_input_gives_nan_and_reason():
    layer = nn.Conv2d(2, 3, 3)
    result = neuron_signals(layer.weight, torch.randn(4, 5, 6, 6), layer)
    assert torch.isnan(result.values).all()
    assert "does not match" in result.reason
    tiny = neuron_signals(layer.weight, torch.randn(4, 2, 2, 2), layer)
    assert "smaller than the kernel" in tiny.reason


def test_unsupported_layers_give_nan_and_reason():
    transposed = nn.ConvTranspose2d(3, 4, 3)
    result = neuron_signals(transposed.weight, torch.randn(2, 3, 5, 5), transposed, top_k=2)
    assert torch.isnan(result.values).all() and "ConvTranspose2d" in result.reason
    conv = nn.Conv2d(3, 4, 3)
    missing = neuron_signals(conv.weight, torch.randn(2, 3, 5, 5), None)
    assert torch.isnan(missing.values).all() and "conv_params" in missing.reason


def test_class_means_are_mean_absolute_signals():
    signals = torch.tensor([[1.0, -1.0], [-3.0, 2.0], [0.5, 0.5], [5.0, 5.0]])
    labels = torch.tensor([1, 1, 0, 7])
    means = class_mean_signals(signals, labels, num_classes=3)
    torch.testing.assert_close(means.values[1], torch.tensor([2.0, 1.5]))
    torch.testing.assert_close(means.values[0], torch.tensor([0.5, 0.5]))
    assert torch.isnan(means.values[2]).all() and 2 in means.reasons
    assert any("outside" in note for note in means.notes)
