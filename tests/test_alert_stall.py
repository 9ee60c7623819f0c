"""TrainingStalled and LayerFrozen on synthetic norm histories, the relative change checked
against its textbook definition |x_t / x_{t-1} - 1|."""

from __future__ import annotations

import math

import pytest

from svd_callback.alerts import (
    AlertEngine,
    LayerFrozen,
    MetricHistory,
    TrainingStalled,
    default_rules,
)
from svd_callback.alerts.stall_rules import relative_change, shape_change
from svd_callback.report import LayerReport, Report

LAYERS = ("a", "b", "c", "d")


def norms_run(changes: dict[str, list[float]], start: float = 2.0) -> list[list[LayerReport]]:
    """Analyses at epochs 0..T: each layer's spectral norm multiplied by (1 + change_t) per
    analysis and its Frobenius norm by (1 - change_t / 2) (so the larger change is spectral)."""
    steps = len(next(iter(changes.values())))
    value = {layer: [start, 3 * start] for layer in changes}
    out = []
    for t in range(steps + 1):
        if t:
            for layer, seq in changes.items():
                value[layer][0] *= 1 + seq[t - 1]
                value[layer][1] *= 1 - seq[t - 1] / 2
        out.append([LayerReport(layer, "linear", "unfold", metrics={
            "spectral_norm": value[layer][0], "frobenius_norm": value[layer][1]})
            for layer in changes])
    return out


def fired(rule, reports) -> list[tuple[int, str | None]]:
    engine = AlertEngine([rule])
    return [(a.epoch, a.layer) for e, rep in enumerate(reports)
            for a in engine.update(e, 10 * e, Report(rep))]


def test_relative_change_is_the_largest_norm_ratio_minus_one_over_modes():
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


HEALTHY = [0.3, 1.0, 0.3, 0.09, 0.06, 0.04, 0.03, 0.02, 0.01, 0.009, 0.007, 0.008, 0.007]


def test_a_healthy_slowing_run_is_not_stalled():
    assert fired(TrainingStalled(), norms_run({n: HEALTHY for n in LAYERS})) == []


def test_too_low_a_learning_rate_is_stalled_after_patience_analyses():
    tiny = [2e-5] * 6
    assert fired(TrainingStalled(), norms_run({n: tiny for n in LAYERS})) == [(2, None)]
    assert fired(TrainingStalled(patience=4), norms_run({n: tiny for n in LAYERS})) == [(4, None)]


def test_dying_updates_are_stalled_after_three_falls_or_two_with_a_flat_loss():
    dying = [6.0, 0.1, 0.01, 0.001, 1e-4]  # x0.1 per epoch: momentum running out
    assert fired(TrainingStalled(), norms_run({n: dying for n in LAYERS})) == [(4, None)]
    reports = norms_run({n: dying for n in LAYERS})
    engine = AlertEngine([TrainingStalled()])
    flat = [engine.update(e, e, Report(rep), training={"train_loss": 2.30 - 1e-4 * e})
            for e, rep in enumerate(reports)]
    # the 60x fall of epoch 2 under a flat loss is a collapse: flagged at once
    assert [e for e, alerts in enumerate(flat) if alerts] == [2]
    without_collapse = AlertEngine([TrainingStalled(collapse=0.0)])
    flat = [without_collapse.update(e, e, Report(rep),
                                    training={"train_loss": 2.30 - 1e-4 * e})
            for e, rep in enumerate(reports)]
    assert [e for e, alerts in enumerate(flat) if alerts] == [3]
    falling = AlertEngine([TrainingStalled()])
    learned = [falling.update(e, e, Report(rep), training={"train_loss": 2.0 / (e + 1)})
               for e, rep in enumerate(reports)]
    assert [e for e, alerts in enumerate(learned) if alerts] == [4]
    # fast settling that stops falling (healthy SGD: 1.5, 0.39, 0.061, 0.012, 0.0057) and one
    # 10x drop at the end of a cosine schedule are not dying out
    sgd = [1.54, 0.389, 0.0611, 0.0121, 0.0057, 0.0176]
    assert fired(TrainingStalled(), norms_run({n: sgd for n in LAYERS})) == []
    once = [0.05, 0.03, 0.02, 0.02, 0.002]
    assert fired(TrainingStalled(), norms_run({n: once for n in LAYERS})) == []


def test_fraction_of_layers_and_rearming():
    # a single stalled layer of four is not a stalled network; two of four are (fraction 0.5)
    one = {"a": [1e-5] * 5, **{n: HEALTHY[:5] for n in LAYERS[1:]}}
    assert fired(TrainingStalled(), norms_run(one)) == []
    two = {"a": [1e-5] * 5, "b": [1e-5] * 5, "c": HEALTHY[:5], "d": HEALTHY[:5]}
    assert fired(TrainingStalled(), norms_run(two)) == [(2, None)]
    # stalls, recovers (re-arms), stalls again: two alerts
    seq = [1e-5, 1e-5, 0.02, 0.02, 1e-5, 1e-5]
    assert fired(TrainingStalled(), norms_run({n: seq for n in LAYERS})) == [(2, None), (6, None)]


def test_a_layer_that_moved_and_settled_has_converged_not_stalled():
    settled = [0.5, 0.1, 0.05, 0.02, 0.01, 5e-3, 9e-4, 8e-4, 7e-4]  # slow decay, moved > 10%
    assert fired(TrainingStalled(), norms_run({n: settled for n in LAYERS})) == []
    assert fired(TrainingStalled(max_moved=10.0),
                 norms_run({n: settled for n in LAYERS})) == [(8, None)]


def _bn_reports(norm_change: float, shape_change: float, steps: int = 4):
    """BatchNorm-followed layers whose Frobenius norm changes by ``norm_change`` and whose
    spectral/Frobenius ratio by ``shape_change`` per analysis."""
    out = []
    for t in range(steps + 1):
        frob = 3.0 * (1 + norm_change) ** t
        ratio = 0.5 * (1 + shape_change) ** t
        out.append([LayerReport(n, "conv2d", "unfold", normalized_by="bn", metrics={
            "spectral_norm": ratio * frob, "frobenius_norm": frob}) for n in LAYERS])
    return out


def test_batchnormed_layers_are_judged_by_the_shape_of_their_spectrum_only():
    # norms nearly still (second-order change) while the spectrum rotates: learning
    assert fired(TrainingStalled(), _bn_reports(1e-5, 1e-2)) == []
    # norms shrinking 5% per analysis (weight decay) while the shape stays: not learning
    assert fired(TrainingStalled(), _bn_reports(-0.05, 5e-5)) == [(2, None)]
    assert fired(TrainingStalled(shape_tolerance=0.0), _bn_reports(-0.05, 5e-5)) == []
    # a shape that already moved by more than max_moved has converged
    settled = _bn_reports(0.0, 5e-5)
    for rec in settled[0]:
        rec.metrics["spectral_norm"] *= 1.5
    assert fired(TrainingStalled(), settled) == []


def test_shape_change_is_blind_to_rescaling():
    history = MetricHistory()
    history.append(0, 0, Report([LayerReport("a", "conv2d", "unfold", metrics={
        "spectral_norm": 2.0, "frobenius_norm": 4.0})]))
    history.append(1, 1, Report([LayerReport("a", "conv2d", "unfold", metrics={
        "spectral_norm": 20.0, "frobenius_norm": 40.0})]))
    history.append(2, 2, Report([LayerReport("a", "conv2d", "unfold", metrics={
        "spectral_norm": 22.0, "frobenius_norm": 40.0})]))
    assert shape_change(history[0], history[1], "a") == 0.0
    assert shape_change(history[1], history[2], "a") == pytest.approx(0.1)
    assert shape_change(history[0], history[2], "missing") is None


def test_batchnormed_layers_are_not_judged_by_their_norms():
    reports = _bn_reports(1e-5, 1e-2)
    assert fired(TrainingStalled(), reports) == []
    assert fired(LayerFrozen(), norms_run({"a": [0.0] * 3})) == [(2, "a")]


def test_stalled_is_silent_before_min_epoch_and_on_nan():
    tiny = {n: [1e-5] * 4 for n in LAYERS}
    assert fired(TrainingStalled(min_epoch=3), norms_run(tiny)) == [(3, None)]
    reports = norms_run(tiny)
    for rec in reports[1]:
        rec.metrics = {"spectral_norm": math.nan, "frobenius_norm": math.nan}
    assert fired(TrainingStalled(), reports) == [(4, None)]  # no evidence at epochs 1-2


def test_stalled_action_stop_and_argument_checks():
    engine = AlertEngine([TrainingStalled(action="stop")])
    alerts = [a for e, rep in enumerate(norms_run({n: [1e-5] * 3 for n in LAYERS}))
              for a in engine.update(e, e, Report(rep))]
    assert [a.severity for a in alerts] == ["stop"]
    assert "4 of 4 layers stopped changing" in alerts[0].message
    for bad in ({"fraction": 0}, {"patience": 0}, {"tolerance": -1}, {"slow": math.nan},
                {"decelerations": 1}, {"max_moved": -0.1}):
        with pytest.raises(ValueError):
            TrainingStalled(**bad)


def test_stalled_state_survives_a_checkpoint():
    reports = norms_run({n: [1e-5] * 6 for n in LAYERS})
    first = AlertEngine([TrainingStalled()])
    for e, rep in enumerate(reports[:3]):
        first.update(e, e, Report(rep))
    second = AlertEngine([TrainingStalled()])
    second.load_state_dict(first.state_dict())
    later = [a for e, rep in enumerate(reports) if e >= 3 for a in second.update(e, e, Report(rep))]
    assert later == []  # fired at epoch 2 already, the condition still holds


def test_layer_frozen_fires_on_exactly_unchanged_weights_only():
    frozen = {"a": [0.0] * 5, "b": [2e-6] * 5, "c": HEALTHY[:5]}
    assert fired(LayerFrozen(), norms_run(frozen)) == [(2, "a")]
    assert fired(LayerFrozen(patience=3), norms_run(frozen)) == [(3, "a")]


def test_default_rules_include_the_stall_rules():
    names = {type(r).__name__ for r in default_rules()}
    assert {"TrainingStalled", "LayerFrozen"} <= names


def _with_losses(rule, reports, val_losses):
    engine = AlertEngine([rule])
    return [e for e, rep in enumerate(reports)
            if engine.update(e, e, Report(rep), training={"val_loss": val_losses[e]}
                             if val_losses[e] is not None else {})]


def test_a_collapse_under_a_flat_validation_loss_is_flagged_at_epoch_2():
    # a net killed in epoch 1: every layer moved 25x, then 0.12 (x0.005), the val loss at chance
    dead = {n: [25.0, 0.12, 0.012, 0.0012] for n in LAYERS}
    at_chance = [None, 2.311, 2.305, 2.304, 2.304]
    assert _with_losses(TrainingStalled(), norms_run(dead), at_chance) == [2]
    # the same fall while the validation loss improves by > 1% is learning, not a collapse
    improving = [None, 2.0, 1.5, 1.2, 1.0]
    assert _with_losses(TrainingStalled(), norms_run(dead), improving) == [4]  # dying out only
    # a rising (or non-finite) loss does not improve either
    rising = [None, 20.0, 30.0, math.nan, 25.0]
    assert _with_losses(TrainingStalled(), norms_run(dead), rising) == [2]


def test_a_collapse_needs_a_fraction_of_all_layers_batchnormed_ones_included():
    # healthy BatchNorm ResNet (Fashion-MNIST, SGD cosine): its head grew 2.6x in epoch 1, then
    # changed 0.09 (x0.035) while the val loss went 0.403 -> 0.407; the other layers fell <= 13x
    healthy = {"head": [2.6, 0.09, 0.049, 0.038], "stem": [0.19, 0.11, 0.2, 0.068],
               "conv1": [0.65, 0.17, 0.099, 0.038], "conv2": [0.74, 0.058, 0.049, 0.033]}
    reports = norms_run(healthy)
    for analysis in reports:
        for rec in analysis:
            rec.normalized_by = None if rec.name == "head" else "bn"
    flat = [None, 0.403, 0.407, 0.346, 0.344]
    assert _with_losses(TrainingStalled(), reports, flat) == []
    # the same net with every layer collapsing (BatchNorm-followed ones count) is flagged
    dead = norms_run({n: [2.6, 0.01, 0.001, 1e-4] for n in healthy})
    for analysis in dead:
        for rec in analysis:
            rec.normalized_by = None if rec.name == "head" else "bn"
    assert _with_losses(TrainingStalled(), dead, [None, 2.31, 2.305, 2.304, 2.304]) == [2]
    with pytest.raises(ValueError, match="collapse"):
        TrainingStalled(collapse=-1.0)
