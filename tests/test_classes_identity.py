"""Neurons matched across analyses by their singular vectors (Hungarian assignment on the
|cosine| of the rank-one components u v^T), and the class statistics that follow them.

Oracles: planted SVDs W = U diag(S) V^T whose vectors are known, so the matching and its mean
|cosine| are known in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from svd_callback.alerts import AlertEngine, ClassLostSpecificNeurons
from svd_callback.classes import ClassAnalysisConfig, ClassTracker, analyze_classes
from svd_callback.classes.identity import component_cosines, match_neurons
from svd_callback.classes.probe import ProbeSet
from svd_callback.report import Report
from svd_callback.spectra import unfold_svd


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q


def _basis(weight: torch.Tensor, groups: int = 1):
    u, _, vh = unfold_svd(weight, groups)
    return u, vh


def test_a_permutation_of_singular_values_is_undone():
    u, v = _orthogonal(6, 0), _orthogonal(10, 1)[:, :6]
    sigma = torch.tensor([6.0, 5, 4, 3, 2, 1], dtype=torch.float64)
    before = u @ torch.diag(sigma) @ v.T
    permuted = torch.tensor([3, 0, 5, 1, 4, 2])  # neuron i now has sigma[permuted[i]]
    after = u @ torch.diag(sigma[permuted]) @ v.T
    match = match_neurons(_basis(before), _basis(after))
    # previous neuron i (vectors u_i, v_i) is now ranked by its new value sigma[permuted[i]]:
    # 3, 6, 1, 5, 2, 4 -> ranks 3, 0, 5, 1, 4, 2
    assert match.previous_to_current.tolist() == [3, 0, 5, 1, 4, 2]
    assert match.mean_cosine == pytest.approx(1.0, abs=1e-9)
    assert match.previous_to_current.tolist() != list(range(6))  # ranks alone would be wrong


@pytest.mark.parametrize("theta", [0.2, 0.5])
def test_a_rotation_lowers_the_mean_cosine_as_in_closed_form(theta):
    u, v = _orthogonal(5, 2), _orthogonal(8, 3)[:, :5]
    sigma = torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64)
    rotated = v.clone()
    c, s = math.cos(theta), math.sin(theta)
    rotated[:, 1], rotated[:, 2] = c * v[:, 1] - s * v[:, 2], s * v[:, 1] + c * v[:, 2]
    before = u @ torch.diag(sigma) @ v.T
    after = u @ torch.diag(sigma) @ rotated.T
    match = match_neurons(_basis(before), _basis(after))
    assert match.previous_to_current.tolist() == list(range(5))
    # neurons 1 and 2 keep u and turn v by theta: |cos| = cos(theta); the others are unchanged
    assert match.cosine.tolist() == pytest.approx([1, c, c, 1, 1], abs=1e-9)
    assert match.mean_cosine == pytest.approx((3 + 2 * c) / 5, abs=1e-9)


def test_grouped_conv_neurons_of_different_groups_have_cosine_zero():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, groups=2)
    basis = _basis(conv.weight.detach(), groups=2)
    cosines = component_cosines(basis, basis)
    r = 3  # min(6/2, 2*9) neurons per group
    assert cosines.shape == (2 * r, 2 * r)
    assert torch.all(cosines[:r, r:] == 0) and torch.all(cosines[r:, :r] == 0)
    assert torch.allclose(torch.diagonal(cosines), torch.ones(2 * r, dtype=torch.float64))
    other = _basis(nn.Conv2d(4, 8, 3, groups=2).weight.detach(), groups=2)
    match = match_neurons(basis, other)
    assert match.reason is not None and "not comparable" in match.reason
    assert math.isnan(match.mean_cosine)


def _planted(sigma: list[float]) -> tuple[nn.Module, ProbeSet]:
    """A linear layer whose class-c images point along its c-th right singular vector."""
    u, v = _orthogonal(6, 4).float(), _orthogonal(6, 5).float()
    layer = nn.Linear(6, 6)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(torch.tensor(sigma)) @ v.T)
    labels = torch.arange(24) % 3
    noise = 0.01 * torch.randn(24, 6, generator=torch.Generator().manual_seed(6))
    inputs = 4 * v.T[labels] + noise
    return nn.Sequential(layer), ProbeSet(inputs, labels, torch.arange(24))


def test_the_tracker_follows_vectors_when_the_ranks_swap():
    config = ClassAnalysisConfig(feature_layer="0")
    tracker = ClassTracker()
    model, probe = _planted([6.0, 5.0, 4.9, 2.0, 1.5, 1.0])
    first = analyze_classes(model, probe, config, tracker=tracker)
    assert first.edges["0"] == {0: frozenset({0}), 1: frozenset({1}), 2: frozenset({2})}
    assert math.isnan(first.layers["0"]["neuron_match_cosine"])
    # swap the singular values of the vectors of classes 1 and 2: their ranks swap
    model, probe = _planted([6.0, 4.9, 5.0, 2.0, 1.5, 1.0])
    second = analyze_classes(model, probe, config, tracker=tracker)
    assert second.edges["0"] == {0: frozenset({0}), 1: frozenset({2}), 2: frozenset({1})}
    stats = second.layers["0"]
    assert stats["neuron_match_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert stats["edge_stability_mean"] == 1.0  # by rank it would be 1/3
    assert second.specific_retained["0"].tolist() == [1.0, 1.0, 1.0]
    # a checkpointed tracker matches the same way
    restored = ClassTracker()
    restored.load_state_dict(tracker.state_dict())
    third = analyze_classes(model, probe, config, tracker=restored)
    assert third.layers["0"]["edge_stability_mean"] == 1.0


def test_lost_specific_neurons_follows_vectors():
    engine = AlertEngine([ClassLostSpecificNeurons(min_epoch=0)])
    fired = []
    for epoch, metrics in enumerate([
        {"specific_neurons/0": 3.0},  # first analysis: arms (count 3)
        {"specific_neurons/0": 3.0, "specific_retained/0": 2.0},  # kept 2: no alert
        {"specific_neurons/0": 3.0, "specific_retained/0": 0.0},  # same count, other vectors
        {"specific_neurons/0": 3.0, "specific_retained/0": 3.0},  # re-armed
        {"specific_neurons/0": 1.0, "specific_retained/0": 1.0},  # no evidence
        {"specific_neurons/0": 0.0, "specific_retained/0": 0.0},  # lost
    ]):
        alerts = engine.update(epoch, epoch, Report(), classes={"hidden": metrics})
        fired.append([a.metric for a in alerts])
    assert fired == [[], [], ["specific_neurons/0"], [], [], ["specific_neurons/0"]]
