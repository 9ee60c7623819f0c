"""The motion rules (TrainingStalled, LayerFrozen, VanishingUpdates, WeightCollapse) on
synthetic histories of weight_rotation / weight_motion / norms, and the random-matrix stable
rank they compare spectra with, checked against sampled random matrices."""

from __future__ import annotations

import math

import pytest
import torch

from svd_callback.alerts import (
    AlertEngine,
    LayerFrozen,
    MetricHistory,
    TrainingStalled,
    VanishingUpdates,
    WeightCollapse,
    default_rules,
)
from svd_callback.alerts.stall_rules import randomness, relative_change
from svd_callback.report import LayerReport, Report
from svd_callback.rmt import random_stable_rank

LAYERS = ("a", "b", "c", "d")
SHAPE = (64, 256)
RANDOM_SR = random_stable_rank(*SHAPE)


def motion_run(rotations: dict[str, list[float]], *, randomness_ratio: float = 1.05,
               motion: dict[str, list[float]] | None = None,
               norms: dict[str, list[float]] | None = None,
               forming: tuple[str, ...] = ()) -> list[list[LayerReport]]:
    """Analyses 0..T: each layer's weight_rotation (and weight_motion, equal unless given) at
    analyses 1..T, NaN at 0, a stable rank of ``randomness_ratio`` times a random matrix's
    (falling by 2% per analysis, to at least 0.85 x, for the layers in ``forming``)."""
    steps = len(next(iter(rotations.values())))
    out = []
    for t in range(steps + 1):
        records = []
        for layer, seq in rotations.items():
            rot = math.nan if t == 0 else seq[t - 1]
            moved = rot if motion is None or t == 0 else motion[layer][t - 1]
            frob = 3.0 if norms is None else norms[layer][t]
            ratio = max(0.85, randomness_ratio - 0.02 * t) if layer in forming \
                else randomness_ratio
            records.append(LayerReport(layer, "linear", "unfold", matrix_shape=SHAPE, metrics={
                "weight_rotation": rot, "weight_motion": moved, "frobenius_norm": frob,
                "spectral_norm": frob / 4, "stable_rank": ratio * RANDOM_SR}))
        out.append(records)
    return out


def fired(rule, reports, training=None) -> list[tuple[int, tuple[str, ...]]]:
    engine = AlertEngine([rule])
    return [(a.epoch, a.layers) for e, rep in enumerate(reports)
            for a in engine.update(e, 10 * e, Report(rep),
                                   training=None if training is None else training[e])]


def epochs(rule, reports, training=None) -> list[int]:
    return [e for e, _ in fired(rule, reports, training)]


HEALTHY = [0.3, 0.5, 0.2, 0.1, 0.08, 0.06, 0.05, 0.04, 0.04, 0.03]  # digits CNN, Adam


def test_the_random_stable_rank_is_that_of_sampled_random_matrices():
    generator = torch.Generator().manual_seed(0)
    for rows, columns in ((64, 64), (64, 576), (256, 784), (10, 128)):
        w = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
        sigma = torch.linalg.svdvals(w)
        ratio = float((sigma ** 2).sum() / sigma[0] ** 2) / random_stable_rank(rows, columns)
        assert 0.95 < ratio < 1.35, (rows, columns, ratio)  # the edge is reached from below
        uniform = (torch.rand(rows, columns, generator=generator, dtype=torch.float64) - 0.5)
        sigma = torch.linalg.svdvals(uniform)  # Kaiming-uniform: i.i.d. too
        ratio = float((sigma ** 2).sum() / sigma[0] ** 2) / random_stable_rank(rows, columns)
        assert 0.95 < ratio < 1.35, (rows, columns, ratio)
    low_rank = torch.randn(64, 3, generator=generator) @ torch.randn(3, 256, generator=generator)
    sigma = torch.linalg.svdvals(low_rank.double())
    assert float((sigma ** 2).sum() / sigma[0] ** 2) / random_stable_rank(64, 256) < 0.2
    history = MetricHistory()
    history.append(0, 0, Report(motion_run({"a": [0.1]}, randomness_ratio=0.4)[0]))
    assert randomness(history.latest, "a") == pytest.approx(0.4)
    assert randomness(history.latest, "missing") is None


def test_a_healthy_slowing_run_is_silent():
    assert fired(TrainingStalled(), motion_run({n: HEALTHY for n in LAYERS},
                                               forming=LAYERS)) == []
    # its spectra taking shape is what tells it from weights that cannot learn
    assert fired(TrainingStalled(), motion_run({n: HEALTHY for n in LAYERS})) == [(4, LAYERS)]


def test_too_low_a_learning_rate_is_not_learning_while_the_weights_look_random():
    tiny = [1e-4] * 6  # lr 1e-6 on the digits CNN: 5e-5 to 2.3e-4 rad per epoch
    reports = motion_run({n: tiny for n in LAYERS})
    assert fired(TrainingStalled(), reports) == [(2, LAYERS)]
    assert epochs(TrainingStalled(patience=4), reports) == [4]
    alert = AlertEngine([TrainingStalled()])
    messages = [a for e, rep in enumerate(reports) for a in alert.update(e, e, Report(rep))]
    assert "not learning: 4 of 4 layers" in messages[0].message
    assert "still look random" in messages[0].message and "learning rate" in messages[0].meaning


def test_steps_that_shrink_while_the_spectra_keep_their_random_shape_are_not_learning():
    """Weights initialised 30x too large for Adam (digits CNN): every layer turned 7e-3 to
    3e-2 rad in epoch 1, less each epoch after, at an unchanged stable rank; a healthy SGD run
    sat at chance for three epochs turning 1e-2 to 7e-2 rad, more each epoch, then learned."""
    shrinking = {n: [0.02, 0.015, 0.011, 0.008, 0.006] for n in LAYERS}
    assert fired(TrainingStalled(), motion_run(shrinking)) == [(3, LAYERS)]
    assert fired(TrainingStalled(shape_tolerance=0.0), motion_run(shrinking)) == []
    slow_start = {n: [0.014, 0.022, 0.05, 0.25, 0.29] for n in LAYERS}
    assert fired(TrainingStalled(), motion_run(slow_start)) == []
    forming = motion_run(shrinking)  # the same steps while the spectra concentrate: learning
    for t, analysis in enumerate(forming):
        for record in analysis:
            record.metrics["stable_rank"] = (1.05 - 0.03 * t) * RANDOM_SR
    assert fired(TrainingStalled(), forming) == []


def test_fine_tuning_a_trained_network_slowly_is_not_stalled():
    """The same small motion on weights whose spectra training concentrated (stable rank 0.4 x
    a random matrix's): fine-tuning, or a converged run, not a net that never learned."""
    slow = [3e-4] * 8
    assert fired(TrainingStalled(), motion_run({n: slow for n in LAYERS},
                                               randomness_ratio=0.4)) == []
    # one trained layer is enough to tell
    reports = motion_run({n: slow for n in LAYERS})
    for analysis in reports:
        analysis[0].metrics["stable_rank"] = 0.4 * RANDOM_SR
    assert fired(TrainingStalled(), reports) == []
    assert epochs(TrainingStalled(random_like=0.0), reports) == [2]  # the check off


def test_without_a_readable_spectrum_a_flat_training_loss_is_asked_for():
    reports = motion_run({n: [1e-4] * 5 for n in LAYERS})
    for analysis in reports:
        for record in analysis:
            del record.metrics["stable_rank"]
    falling = [{"train_loss": 2.0 / (e + 1)} for e in range(6)]
    flat = [{"train_loss": 2.30 - 1e-4 * e} for e in range(6)]
    assert epochs(TrainingStalled(), reports, falling) == []
    assert epochs(TrainingStalled(), reports, flat) == [2]
    assert epochs(TrainingStalled(), reports) == [2]  # nothing logged: motion decides


def test_a_collapse_under_a_flat_validation_loss_is_flagged_at_epoch_2():
    # a net killed in epoch 1 (lr_dead on the digits CNN): 1.5 rad, then 0.036 (x0.024)
    dead = {n: [1.5, 0.036, 0.0038, 4e-4, 4e-5] for n in LAYERS}
    reports = motion_run(dead, randomness_ratio=0.18)
    at_chance = [{}] + [{"val_loss": v} for v in (2.311, 2.305, 2.304, 2.304, 2.304)]
    assert fired(TrainingStalled(), reports, at_chance) == [(2, LAYERS)]
    engine = AlertEngine([TrainingStalled()])
    alert = [a for e, rep in enumerate(reports)
             for a in engine.update(e, e, Report(rep), training=at_chance[e])][0]
    assert "collapse" in alert.message and "1.5 -> 0.036" in alert.message
    assert "died" in alert.meaning
    # the same fall while the validation loss improves by > 1%: dying out, two analyses later
    improving = [{}] + [{"val_loss": v} for v in (2.0, 1.5, 1.2, 1.0, 0.9)]
    assert epochs(TrainingStalled(), reports, improving) == [4]
    # a rising or non-finite loss does not improve either
    rising = [{}] + [{"val_loss": v} for v in (20.0, 30.0, math.nan, 25.0, 26.0)]
    assert epochs(TrainingStalled(), reports, rising) == [2]


def test_dying_out_needs_three_falls_or_two_with_a_flat_training_loss():
    dying = {n: [1.0, 0.15, 0.018, 0.0027, 4e-4] for n in LAYERS}  # x0.15 per analysis
    reports = motion_run(dying, randomness_ratio=0.3)
    assert epochs(TrainingStalled(collapse=0.0), reports) == [4]
    flat = [{"train_loss": 2.30 - 1e-4 * e} for e in range(6)]
    assert epochs(TrainingStalled(collapse=0.0), reports, flat) == [3]
    # healthy SGD settling (1.5, 0.39, 0.06, 0.012, 0.0057, then up) is not dying out
    sgd = {n: [1.54, 0.389, 0.0611, 0.0121, 0.0057, 0.0176] for n in LAYERS}
    assert fired(TrainingStalled(), motion_run(sgd, randomness_ratio=0.4)) == []


def test_fraction_of_layers_and_rearming():
    one = {"a": [1e-4] * 5, **{n: HEALTHY[:5] for n in LAYERS[1:]}}
    assert fired(TrainingStalled(), motion_run(one, forming=LAYERS[1:])) == []
    two = {"a": [1e-4] * 5, "b": [1e-4] * 5, "c": HEALTHY[:5], "d": HEALTHY[:5]}
    assert fired(TrainingStalled(), motion_run(two, forming=("c", "d"))) == [(2, ("a", "b"))]
    seq = [1e-4, 1e-4, 0.02, 0.02, 1e-4, 1e-4]  # stalls, recovers (re-arms), stalls again
    assert epochs(TrainingStalled(), motion_run({n: seq for n in LAYERS})) == [2, 6]


def test_frozen_layers_are_layer_frozen_s_not_stalled():
    """Layers that do not move at all (weight_motion exactly 0) are left to LayerFrozen; when
    all are frozen it says the optimiser updates nothing."""
    frozen = motion_run({n: [0.0] * 4 for n in LAYERS})
    assert fired(TrainingStalled(), frozen) == []
    engine = AlertEngine([LayerFrozen()])
    alerts = [a for e, rep in enumerate(frozen) for a in engine.update(e, e, Report(rep))]
    assert [(a.epoch, a.layers) for a in alerts] == [(2, LAYERS)]
    assert "all 4 layers" in alerts[0].message and "updates nothing" in alerts[0].message
    some = motion_run({"a": [0.0] * 4, "b": [0.0] * 4, "c": HEALTHY[:4], "d": HEALTHY[:4]})
    assert fired(LayerFrozen(), some) == [(2, ("a", "b"))]
    assert fired(LayerFrozen(patience=3), some) == [(3, ("a", "b"))]


def test_a_layer_shrinking_under_weight_decay_is_not_frozen():
    # rotation 0 (a pure rescaling) but the weight moves: not frozen
    shrinking = motion_run({"a": [0.0] * 4, "b": HEALTHY[:4], "c": HEALTHY[:4]},
                           motion={"a": [0.01] * 4, "b": HEALTHY[:4], "c": HEALTHY[:4]})
    assert fired(LayerFrozen(), shrinking) == []


def test_histories_without_motion_fall_back_to_the_norm_change():
    history = MetricHistory()
    history.append(0, 0, Report([
        LayerReport("a", "conv2d", "unfold", metrics={"spectral_norm": 2.0, "frobenius_norm": 4.0}),
        LayerReport("a", "conv2d", "operator", metrics={"spectral_norm": 5.0}),
    ]))
    history.append(1, 1, Report([
        LayerReport("a", "conv2d", "unfold", metrics={"spectral_norm": 2.2, "frobenius_norm": 3.0}),
        LayerReport("a", "conv2d", "operator", metrics={"spectral_norm": math.nan}),
    ]))
    assert relative_change(history[0], history[1], "a") == pytest.approx(0.25)  # |3/4 - 1|
    assert relative_change(history[0], history[1], "missing") is None
    still = [[LayerReport(n, "linear", "unfold", matrix_shape=SHAPE, metrics={
        "spectral_norm": 2.0 * (1 + 1e-5 * t), "frobenius_norm": 4.0,
        "stable_rank": RANDOM_SR}) for n in LAYERS] for t in range(4)]
    assert epochs(TrainingStalled(), still) == [2]
    unchanged = [[LayerReport("a", "linear", "unfold", metrics={
        "spectral_norm": 2.0, "frobenius_norm": 4.0})] for _ in range(4)]
    assert fired(LayerFrozen(), unchanged) == [(2, ("a",))]


def test_stalled_is_silent_before_min_epoch_and_on_nan():
    tiny = {n: [1e-4] * 4 for n in LAYERS}
    assert epochs(TrainingStalled(min_epoch=3), motion_run(tiny)) == [3]
    reports = motion_run(tiny)
    for rec in reports[1]:
        rec.metrics["weight_rotation"] = math.nan
    assert epochs(TrainingStalled(), reports) == [3]  # no evidence at epoch 1


def test_stalled_action_stop_state_and_argument_checks():
    reports = motion_run({n: [1e-4] * 6 for n in LAYERS})
    engine = AlertEngine([TrainingStalled(action="stop")])
    alerts = [a for e, rep in enumerate(reports) for a in engine.update(e, e, Report(rep))]
    assert [a.severity for a in alerts] == ["stop"]
    first = AlertEngine([TrainingStalled()])
    for e, rep in enumerate(reports[:3]):
        first.update(e, e, Report(rep))
    second = AlertEngine([TrainingStalled()])
    second.load_state_dict(first.state_dict())
    assert [a for e, rep in enumerate(reports) if e >= 3
            for a in second.update(e, e, Report(rep))] == []  # the same episode
    for bad in ({"fraction": 0}, {"patience": 0}, {"tolerance": -1}, {"slow": math.nan},
                {"decelerations": 1}, {"random_like": -0.1}, {"collapse": -1.0}):
        with pytest.raises(ValueError):
            TrainingStalled(**bad)


def test_vanishing_updates_flags_layers_left_behind_by_the_others():
    # a deep sigmoid stack: the first layers turn 1e-4 of what the last ones do
    deep = {"l0": [1e-5] * 4, "l1": [5e-5] * 4, "l2": [0.05] * 4, "l3": [0.06] * 4,
            "l4": [0.08] * 4}
    assert fired(VanishingUpdates(), motion_run(deep)) == [(2, ("l0", "l1"))]
    # a healthy spread (the slowest layer at 0.4x the median) is silent
    spread = {n: [v] * 4 for n, v in zip(LAYERS, (0.02, 0.05, 0.06, 0.08), strict=True)}
    assert fired(VanishingUpdates(), motion_run(spread)) == []
    # a model that does not move as a whole is TrainingStalled's, not this rule's
    still = {n: [v] * 4 for n, v in zip(LAYERS, (1e-7, 1e-4, 1e-4, 2e-4), strict=True)}
    assert fired(VanishingUpdates(), motion_run(still)) == []
    assert fired(VanishingUpdates(), motion_run({"a": [1e-5] * 4, "b": [0.1] * 4})) == []
    with pytest.raises(ValueError):
        VanishingUpdates(min_layers=1)


def test_weight_collapse_far_below_the_first_norm_or_falling_geometrically():
    # SGD weight_decay 0.2 on the digits CNN: 2.7x per epoch
    falling = {n: [3.0 / 2.7 ** t for t in range(6)] for n in LAYERS}
    reports = motion_run({n: [0.1] * 5 for n in LAYERS}, norms=falling)
    assert fired(WeightCollapse(), reports) == [(2, LAYERS)]
    assert fired(WeightCollapse(rate=0), reports) == [(5, LAYERS)]  # 143x below at epoch 5
    # one fall of 9x (SGD weight_decay 0.2 on the wide MLP, epoch 1, then flat at 1/9)
    once = {n: [13.0] + [1.45] * 5 for n in LAYERS}
    assert fired(WeightCollapse(), motion_run({n: [0.1] * 5 for n in LAYERS},
                                              norms=once)) == [(1, LAYERS)]
    assert fired(WeightCollapse(drop=0), motion_run({n: [0.1] * 5 for n in LAYERS},
                                                    norms=once)) == []
    # healthy weight decay: 5% per epoch for 10 epochs
    decay = {n: [3.0 * 0.95 ** t for t in range(11)] for n in LAYERS}
    assert fired(WeightCollapse(), motion_run({n: [0.1] * 10 for n in LAYERS},
                                              norms=decay)) == []
    engine = AlertEngine([WeightCollapse(rate=0)])
    alerts = [a for e, rep in enumerate(reports) for a in engine.update(e, e, Report(rep))]
    assert "143.5x below its first value" in alerts[0].message and alerts[0].advice
    # the first values survive a checkpoint
    first = AlertEngine([WeightCollapse(rate=0)])
    for e, rep in enumerate(reports[:2]):
        first.update(e, e, Report(rep))
    second = AlertEngine([WeightCollapse(rate=0)])
    second.load_state_dict(first.state_dict())
    assert [a.epoch for e, rep in enumerate(reports) if e >= 2
            for a in second.update(e, e, Report(rep))] == [5]
    for bad in ({"factor": 1.0}, {"rate": 0.5}, {"falls": 0}, {"drop": 1.0}):
        with pytest.raises(ValueError):
            WeightCollapse(**bad)


def test_default_rules_include_the_motion_rules():
    names = {type(r).__name__ for r in default_rules()}
    assert {"TrainingStalled", "LayerFrozen", "VanishingUpdates", "WeightCollapse"} <= names
