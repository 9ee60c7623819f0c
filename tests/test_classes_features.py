"""Class-specific features (Badola et al.): planted answers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from svd_callback.classes import class_specific_features, find_penultimate_layer, mass_counts

D = 64
PLANTED = {0: [3, 17, 40], 1: [5, 6, 7], 2: [20, 50, 63], 3: [0, 31, 32]}


def _planted_features(strengths: tuple[float, float, float], per_class: int = 30, seed: int = 0):
    """Each class lights up its own 3 of 64 features with the given strengths, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for c, features in PLANTED.items():
        h = 0.001 * torch.rand(per_class, D, generator=generator)
        for feature, strength in zip(features, strengths, strict=True):
            h[:, feature] += strength * (1 + 0.02 * torch.rand(per_class, generator=generator))
        rows.append(h)
        labels += [c] * per_class
    return torch.cat(rows), torch.tensor(labels)


def test_planted_sets_recovered_exactly():
    # p ~ (0.37, 0.33, 0.30, ~0): mass 0.75 needs all 3 -> m = 3, kbar = 3, every image votes for
    # the 3 planted features, equal shares 1/3 -> S_c = the planted set.
    h, labels = _planted_features((1.0, 0.9, 0.8))
    result = class_specific_features(h, labels, num_classes=4, mass=0.75)
    for c, features in PLANTED.items():
        assert result.sets[c] == frozenset(features)
        assert result.size_fraction[c] == pytest.approx(3 / D)
        assert result.kbar[c] == 3
    assert torch.all(result.m_per_image == 3)
    assert result.selectivity == pytest.approx((D - 3) / D)
    assert result.scalars()["feature_count_mean"] == pytest.approx(3.0)


def test_equal_planted_strengths_at_half_mass():
    # p ~ (1/3, 1/3, 1/3): mass 0.5 needs 2 features -> m = 2, kbar = 2; the votes go to the
    # planted features only (each image's top-2 is 2 of its 3), so S_c is 2 of the planted 3
    # (their vote shares are ~1/3 each and two of them reach 1/2).
    h, labels = _planted_features((1.0, 1.0, 1.0), per_class=60)
    result = class_specific_features(h, labels, num_classes=4, mass=0.5)
    for c, features in PLANTED.items():
        assert len(result.sets[c]) == 2
        assert result.sets[c] <= frozenset(features)
    assert result.selectivity == pytest.approx((D - 2) / D)


def test_hand_computed_small_example():
    # 2 classes, D = 5, mass 0.5.
    h = torch.tensor(
        [
            [4.0, 3.0, 2.0, 1.0, 0.0],  # shares .4 .3 ..: m = 2, top-1 = {0}, top-2 = {0, 1}
            [0.0, 1.0, 8.0, 1.0, 0.0],  # .8: m = 1, top-1 = {2}, top-2 = {2, 1} (tie 1/3 -> 1)
            [1.0, 1.0, 1.0, 1.0, 0.0],  # .25 .5: m = 2, top-1 = {0}, top-2 = {0, 1}
            [0.0, 0.0, 0.0, 1.0, 3.0],  # class 1: .75 -> m = 1, top-1 = {4}
            [0.0, 0.0, 0.0, 2.0, 2.0],  # .5 -> m = 1, top-1 = {3} (tie 3/4 -> lower index 3)
        ]
    )
    labels = torch.tensor([0, 0, 0, 1, 1])
    result = class_specific_features(h, labels, num_classes=2, mass=0.5)
    assert result.m_per_image.tolist() == [2, 1, 2, 1, 1]
    # class 0: kbar = floor(5/3) = 1; votes {0: 2, 2: 1}; shares 2/3 -> S_0 = {0}
    # class 1: kbar = floor(1) = 1; votes {4: 1, 3: 1}; sorted ties by index: 3 then 4;
    # share 1/2 reached by {3}.
    assert result.kbar.tolist() == [1, 1]
    assert result.sets == {0: frozenset({0}), 1: frozenset({3})}
    # median of m over all 5 images = 1
    assert result.selectivity == pytest.approx((5 - 1) / 5)
    assert result.selectivity_per_class.tolist() == pytest.approx([(5 - 2) / 5, (5 - 1) / 5])


def test_jaccard_with_previous_epoch():
    h, labels = _planted_features((1.0, 0.9, 0.8))
    first = class_specific_features(h, labels, num_classes=4, mass=0.75)
    previous = dict(first.sets)
    previous[1] = frozenset({5, 6, 9})  # J = 2/4
    second = class_specific_features(h, labels, num_classes=4, mass=0.75, previous=previous)
    assert second.jaccard_previous[0] == 1.0
    assert second.jaccard_previous[1] == pytest.approx(0.5)
    again = class_specific_features(h, labels, num_classes=4, mass=0.75, previous=first)
    assert again.scalars()["feature_jaccard_previous_mean"] == 1.0


def test_absent_class_is_nan_with_reason():
    h, labels = _planted_features((1.0, 0.9, 0.8))
    result = class_specific_features(h, labels, num_classes=6, mass=0.75)
    assert math.isnan(result.size_fraction[5]) and math.isnan(result.kbar[4])
    assert "absent" in result.reasons[5]
    assert 5 not in result.sets
    assert result.size_fraction[:4].tolist() == pytest.approx([3 / D] * 4)


def test_feature_maps_are_pooled_and_negatives_noted():
    h, labels = _planted_features((1.0, 0.9, 0.8), per_class=5)
    maps = h[:, :, None, None].expand(-1, -1, 3, 4).clone()
    pooled = class_specific_features(maps, labels, num_classes=4, mass=0.75)
    assert pooled.sets == class_specific_features(h, labels, num_classes=4, mass=0.75).sets
    negative = h.clone()
    negative[:, 10] = -0.5
    noted = class_specific_features(negative, labels, num_classes=4, mass=0.75)
    assert any("negative" in note for note in noted.notes)
    assert noted.sets[0] == frozenset(PLANTED[0])


def test_all_zero_image_is_ignored():
    h = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    counts = mass_counts(h, 0.5)
    assert math.isnan(counts[0]) and counts[1] == 1
    result = class_specific_features(h, torch.tensor([0, 1]), num_classes=2)
    assert 0 in result.reasons and result.sets[1] == frozenset({0})


def test_find_penultimate_layer_on_a_classifier():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )
    assert find_penultimate_layer(model) == ("4", None)


def test_find_penultimate_layer_refuses_regression_head_and_no_linear():
    regression = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    name, reason = find_penultimate_layer(regression)
    assert name is None and "single output" in reason
    name, reason = find_penultimate_layer(nn.Sequential(nn.Conv2d(1, 2, 3)))
    assert name is None and "no nn.Linear" in reason
