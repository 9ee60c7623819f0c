"""DeepDataProfiler's influential SVD-neurons and the class hyperedges built from them.

The oracle transcribes ``SVDProfiler.create_influential`` (sum aggregation) and
``SVDProfiler.influential_svd_neurons`` of deep-data-profiler 2.0.1 (``classes/svd_influential.py``)
for one image: ``agg = mean over positions of U^T (y - b)``, ``m = |agg|``, sorted descending,
``bool_accept = cumsum / total <= threshold``, ``bool_accept[accept] = True`` (the next one),
weights ``sorted / cumsum[accept - 1]`` zero outside the accepted ones, influential = weight != 0.
Two points DeepDataProfiler leaves open are fixed here as the implementation defines them: ties
are sorted stably (by neuron index) and a row of zeros has no influential neuron.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from svd_callback.classes import ClassAnalysisConfig, ClassTracker, analyze_classes
from svd_callback.classes.hypergraph import influential_hyperedges
from svd_callback.classes.probe import ProbeSet
from svd_callback.classes.signals import influential_neurons, neuron_signals


def ddp_influential_svd_neurons(agg: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """deep-data-profiler 2.0.1's ``influential_svd_neurons`` for one 1-D ``agg`` (stable sort)."""
    m = torch.linalg.norm(agg.view((agg.shape[0], -1)), ord=1, dim=1).unsqueeze(0)
    ordsmat_vals, ordsmat_indices = torch.sort(m, descending=True, stable=True)
    cumsum = torch.cumsum(ordsmat_vals, dim=1)
    totalsum = cumsum[:, -1].detach()
    if float(totalsum) == 0:  # 0/0 in DeepDataProfiler; defined as no influential neuron
        return torch.zeros(agg.shape[0], dtype=torch.bool)
    bool_accept = (cumsum / totalsum.unsqueeze(-1)) <= threshold
    accept = torch.sum(bool_accept, dim=1)
    ordsmat_vals = ordsmat_vals / cumsum[:, accept - 1]
    with contextlib.suppress(IndexError):  # DeepDataProfiler: "taking all values as influential"
        bool_accept[range(len(accept)), accept] = True
    unordered = torch.where(bool_accept, ordsmat_vals, torch.zeros(ordsmat_vals.shape))
    weights = unordered.gather(1, ordsmat_indices.argsort(1))
    return weights.bool()[0]


def ddp_conv_agg(layer: nn.Conv2d, image: torch.Tensor) -> torch.Tensor:
    """``create_influential``'s agg for one image: mean over positions of U^T (y - b)."""
    u = torch.svd(torch.flatten(layer.weight.detach().double(), start_dim=1)).U
    with torch.no_grad():
        y = layer(image[None]).squeeze(0).double()
    y = y.view(y.shape[0], -1) - layer.bias.detach().double().unsqueeze(1)
    projected = u.T @ y
    return torch.sum(projected, axis=1) / projected.shape[1]


def test_planted_rows():
    values = torch.tensor([
        [0.5, 4.0, 1.0, 0.5],   # 4 holds 2/3 > 0.1: none accepted, plus the next -> {1}
        [0.5, -4.0, 1.0, 0.5],  # signs do not matter
        [1.0, 1.0, 1.0, 1.0],   # ties: 0.25 > 0.1, plus the next -> the lowest index
        [0.0, 0.0, 0.0, 0.0],   # all zero: none
        [1.0, math.nan, 1.0, 1.0],  # non-finite: none
    ])
    expected = torch.tensor([
        [False, True, False, False],
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ])
    assert torch.equal(influential_neurons(values), expected)
    # share 0.3 <= 0.3 is accepted (<=), then the next one
    assert influential_neurons(torch.tensor([[3.0, 2.0, 5.0]]), 0.5).tolist() == [
        [True, False, True]]
    # ties with a larger threshold: 0.25, 0.5 accepted, plus the next, by index
    assert influential_neurons(torch.ones(1, 4), 0.5).tolist() == [[True, True, True, False]]
    # threshold 1: everything accepted, but a zero signal is never influential
    assert influential_neurons(torch.tensor([[3.0, 0.0, 1.0]]), 1.0).tolist() == [
        [True, False, True]]
    with pytest.raises(ValueError, match="threshold"):
        influential_neurons(values, 1.5)
    with pytest.raises(ValueError, match="images, neurons"):
        influential_neurons(torch.ones(3))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(-3, 3), min_size=5, max_size=5), min_size=1, max_size=6),
    threshold=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]),
)
def test_equals_the_transcribed_rule_on_ties_and_zeros(rows, threshold):
    values = torch.tensor(rows, dtype=torch.float64)
    expected = torch.stack([ddp_influential_svd_neurons(row, threshold) for row in values])
    assert torch.equal(influential_neurons(values, threshold), expected)


def test_equals_deepdataprofiler_on_a_conv_layer():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 16, 3, padding=1)
    x = torch.relu(torch.randn(12, 3, 7, 7))
    signals = neuron_signals(layer.weight, x, layer)
    assert torch.equal(signals.neuron, torch.arange(16))  # columns in neuron (sigma) order
    for threshold in (0.1, 0.3):
        ours = influential_neurons(signals.values, threshold)
        for i in range(len(x)):
            expected = ddp_influential_svd_neurons(ddp_conv_agg(layer, x[i]), threshold)
            assert torch.equal(ours[i], expected), (threshold, i)


def test_class_hyperedges_count_images():
    flags = torch.tensor([
        [1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 1],  # class 0: neuron 0 in 3 of 4, 2 in 2 of 4
        [0, 1, 0], [0, 1, 0],  # class 1: neuron 1 in both
        [0, 0, 0],  # class 2: nothing influential -> no edge
    ], dtype=torch.bool)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    assert influential_hyperedges(flags, labels, 4, q=0.5) == {
        0: frozenset({0, 2}), 1: frozenset({1})}
    assert influential_hyperedges(flags, labels, 4, q=0.75) == {
        0: frozenset({0}), 1: frozenset({1})}
    assert influential_hyperedges(flags, labels, 4, q=0.8) == {1: frozenset({1})}
    with pytest.raises(ValueError, match="q must be"):
        influential_hyperedges(flags, labels, 4, q=0.0)


def _planted_probe() -> tuple[nn.Module, ProbeSet]:
    """A linear layer whose class-c images point along its c-th right singular vector."""
    torch.manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(6, 6))
    v, _ = torch.linalg.qr(torch.randn(6, 6))
    layer = nn.Linear(6, 6)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(torch.tensor([6.0, 5, 4, 3, 2, 1])) @ v.T)
    labels = torch.arange(40) % 4
    inputs = 5 * v.T[labels] + 0.05 * torch.randn(40, 6)
    return nn.Sequential(layer), ProbeSet(inputs, labels, torch.arange(40))


def test_analysis_uses_the_influential_rule_and_the_named_alternative():
    model, probe = _planted_probe()
    report = analyze_classes(model, probe, ClassAnalysisConfig(feature_layer="0"))
    assert report.edges["0"] == {c: frozenset({c}) for c in range(4)}
    assert report.layers["0"]["class_specific_fraction"] == 1.0
    assert report.n_nodes["0"] == 6  # every neuron, not the top-k
    alternative = analyze_classes(model, probe, ClassAnalysisConfig(
        feature_layer="0", edge_rule="mean_share", top_k=3), tracker=ClassTracker())
    assert alternative.n_nodes["0"] == 3
    assert "jaccard_mean_mean_share" in alternative.layers["0"]
    assert "jaccard_mean" not in alternative.layers["0"]
    with pytest.raises(ValueError, match="edge_rule"):
        ClassAnalysisConfig(edge_rule="top")
