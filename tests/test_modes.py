"""The conv modes as objects (``spectra.modes``): their matrix shape, rows, batched spectrum and
cost against the matrices each mode builds, and one list of modes everywhere."""

from __future__ import annotations

import math

import pytest
import torch

from svd_callback.alerts.engine import WEIGHT_MATRIX_MODES
from svd_callback.config import CONV_MODES
from svd_callback.layers import LayerSpec, estimate_cost
from svd_callback.spectra import slice_matrices, unfold_matrix
from svd_callback.spectra.modes import MODES, PLAIN, conv_mode, mode_for


def _conv(d=8, c=3, k=(3, 3), groups=1, stride=(1, 1), size=(8, 8)) -> LayerSpec:
    module = torch.nn.Conv2d(c * groups, d, k, stride=stride, groups=groups)
    return LayerSpec("conv", module, "conv2d", tuple(module.weight.shape), groups=groups,
                     stride=stride, dilation=(1, 1), input_size=size)


def test_one_list_of_modes():
    assert tuple(MODES) == CONV_MODES
    assert WEIGHT_MATRIX_MODES == ("unfold", "slices")
    assert [m for m in MODES if MODES[m].needs_input_size] == ["operator"]
    with pytest.raises(ValueError, match="unknown conv mode 'fft'"):
        conv_mode("fft")
    assert mode_for("operator", is_conv=False) is PLAIN


@pytest.mark.parametrize("groups", [1, 2])
def test_matrix_shapes_and_rows_are_those_of_the_matrices_each_mode_builds(groups):
    spec = _conv(d=8, c=3, groups=groups)
    weight = spec.weight.detach()
    unfolded = unfold_matrix(weight, groups)  # (g, d/g, c k)
    assert MODES["unfold"].matrix_shape(spec) == tuple(sorted(unfolded.shape[1:], reverse=True))
    assert MODES["unfold"].weight_rows(spec) == unfolded.shape[1]
    sliced = slice_matrices(weight)  # (k, d, c)
    assert MODES["slices"].matrix_shape(spec) == tuple(sorted(sliced.shape[1:], reverse=True))
    assert MODES["slices"].weight_rows(spec) == 8


@pytest.mark.parametrize(("mode", "count"), [
    ("unfold", lambda g: g * min(8 // g, 3 * 9)),
    ("slices", lambda g: 9 * min(8, 3)),  # the stored (d, c) slices, whatever the groups
    ("operator", lambda g: g * 16 * min(8 // g, 3 * 4)),  # stride 2 on 8 x 8: 16 frequencies
])
@pytest.mark.parametrize("groups", [1, 2])
def test_the_batched_spectrum_has_one_value_per_singular_value(mode, count, groups):
    spec = _conv(d=8, c=3, groups=groups, stride=(2, 2))
    how = MODES[mode]
    weights = torch.stack([spec.weight.detach()] * 2)
    svals = how.spectrum(spec, "svd", 1 << 20)(weights)
    assert svals.shape == (2, count(groups))
    rows, cols = how.matrix_shape(spec)
    assert svals.shape[1] % cols == 0  # whole matrices of min(N, M) values


def test_operator_skips_a_missing_or_indivisible_input_size():
    assert MODES["operator"].skip(_conv(size=None))[0] == "input_size_missing"
    assert MODES["operator"].skip(_conv(size=None), "probe failed") == (
        "input_size_missing", "probe failed")
    assert MODES["operator"].skip(_conv(stride=(2, 2), size=(7, 8)))[0] == "input_size_stride"
    assert MODES["operator"].skip(_conv(stride=(2, 2), size=(8, 8))) is None
    assert MODES["unfold"].skip(_conv(size=None)) is None


def test_costs_are_the_flops_of_the_dense_svds():
    spec = _conv(d=16, c=4, groups=2, stride=(2, 2), size=(8, 8))
    def svd_flops(m, n):
        return m * n * min(m, n)
    assert estimate_cost(spec, "unfold") == 2 * svd_flops(8, 4 * 9)
    assert estimate_cost(spec, "slices") == 9 * svd_flops(16, 4)
    assert estimate_cost(spec, "operator") == 16 * 2 * svd_flops(8, 4 * 4)
    linear = LayerSpec("fc", torch.nn.Linear(5, 7), "linear", (7, 5))
    assert {estimate_cost(linear, m) for m in MODES} == {float(svd_flops(7, 5))}
    assert math.isclose(PLAIN.cost(linear), 7 * 5 * 5)
