"""Badola et al.'s functional test of the class-specific feature sets S_c through the head.

Planted model: class c's input makes penultimate feature c equal to 1 and three shared
features equal to 0.05; the head is W = [I_3 | 0]. Then S_c = {c}, the full head and the
S_c-restricted head are both exact (accuracy 1), and a random one-feature set per class is
checked against an exhaustive enumeration of all 6^3 choices (and its closed form 4/9: class 0
is always right, since all-zero logits give argmax 0; classes 1 and 2 only when their own feature
is drawn, probability 1/6).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from svd_callback.classes import ClassAnalysisConfig, ClassTracker, analyze_classes
from svd_callback.classes.functional import functional_test
from svd_callback.classes.probe import ProbeSet


def _planted() -> tuple[nn.Module, ProbeSet]:
    embed, head = nn.Linear(3, 6), nn.Linear(6, 3)
    with torch.no_grad():
        embed.weight.zero_()
        embed.weight[:3] = torch.eye(3)
        embed.bias.copy_(torch.tensor([0, 0, 0, 0.05, 0.05, 0.05]))
        head.weight.zero_()
        head.weight[:, :3] = torch.eye(3)
        head.bias.zero_()
    labels = torch.arange(30) % 3
    inputs = torch.eye(3)[labels]
    return nn.Sequential(embed, nn.ReLU(), head), ProbeSet(inputs, labels, torch.arange(30))


def _enumerated_random_accuracy(features, labels, weight, sizes) -> float:
    """Mean accuracy over every choice of one feature per class (all sizes are 1 here)."""
    h, y, w = features.numpy(), labels.numpy(), weight.numpy()
    assert set(sizes) == {1}
    accuracies = []
    for choice in itertools.product(range(h.shape[1]), repeat=w.shape[0]):
        logits = np.stack([w[c, j] * h[:, j] for c, j in enumerate(choice)], axis=1)
        accuracies.append(np.mean(np.argmax(logits, axis=1) == y))
    return float(np.mean(accuracies))


def test_planted_head_specific_sets_carry_their_classes():
    model, probe = _planted()
    report = analyze_classes(model, probe, ClassAnalysisConfig(functional_draws=20))
    assert report.feature_layer == "2"
    assert report.feature_sets == {0: frozenset({0}), 1: frozenset({1}), 2: frozenset({2})}
    stats = report.layers["2"]
    assert stats["functional_acc_full"] == 1.0
    assert stats["functional_acc_specific"] == 1.0
    assert 1 / 3 <= stats["functional_acc_random"] < 1.0
    assert stats["functional_gain"] == pytest.approx(1.0 - stats["functional_acc_random"])
    assert ("functional_gain", "2") in report.scalars()  # logged as classes/functional_gain/2


def test_random_sets_match_the_exhaustive_enumeration():
    model, probe = _planted()
    with torch.no_grad():
        features = torch.relu(model[0](probe.inputs))
    head = model[2]
    sets = {c: frozenset({c}) for c in range(3)}
    exact = _enumerated_random_accuracy(features, probe.labels, head.weight.detach(), [1, 1, 1])
    assert exact == pytest.approx(4 / 9)
    state = torch.get_rng_state()
    result = functional_test(features, probe.labels, head.weight, head.bias, sets, draws=3000,
                             seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # a private generator
    assert result["functional_acc_random"] == pytest.approx(exact, abs=0.02)
    again = functional_test(features, probe.labels, head.weight, head.bias, sets, draws=3000,
                            seed=5)
    assert again == result


def test_first_analysis_values_are_kept_for_comparison():
    model, probe = _planted()
    tracker = ClassTracker()
    first = analyze_classes(model, probe, tracker=tracker).layers["2"]
    assert first["functional_acc_specific_first"] == first["functional_acc_specific"] == 1.0
    with torch.no_grad():  # the head now reads class c from feature (c + 1) mod 3
        model[2].weight[:, :3] = torch.eye(3)[[1, 2, 0]].T
    later = analyze_classes(model, probe, tracker=tracker).layers["2"]
    assert later["functional_acc_specific"] < 1.0
    assert later["functional_acc_specific_first"] == 1.0
    assert later["functional_gain_first"] == first["functional_gain"]
    restored = ClassTracker()
    restored.load_state_dict(tracker.state_dict())
    assert restored.first_functional == tracker.first_functional


def test_a_head_that_is_not_linear_gives_nan_and_a_reason():
    model, probe = _planted()
    report = analyze_classes(model, probe, ClassAnalysisConfig(feature_layer="1"))
    assert math.isnan(report.layers["1"]["functional_gain"])
    assert "not an nn.Linear head" in report.reasons["functional"]
    with pytest.raises(ValueError, match="do not fit"):
        functional_test(torch.ones(4, 5), torch.zeros(4), torch.ones(3, 6), None, {})
