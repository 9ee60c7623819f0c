"""The default rules replayed on saved histories of real training runs
(``experiments/alert_rules``): silent on healthy runs, a stalled network flagged early."""

from __future__ import annotations

import pytest

from experiments.alert_rules.replay import first_alerts, load, val_accuracies

HEALTHY = ("healthy", "healthy_s1", "healthy_s2", "demo", "bn_adam", "bn_sgd_wd", "bn_adam_lr_10x",
           "fashion_cnn")


@pytest.mark.parametrize("run", HEALTHY)
def test_healthy_runs_raise_no_alert(run):
    assert val_accuracies(run)[-1] > 0.8  # the premise: these runs learned (chance: 0.1)
    assert first_alerts(run) == {}


def test_batchnorm_runs_replay_with_their_normalizers():
    records = [r for a in load("bn_sgd_wd") for r in a.report]
    assert {r.name: r.normalized_by for r in records} == {
        "features.0": "features.1", "features.3": "features.4", "features.7": "features.8",
        "hidden": None, "classifier": None}


def test_a_dead_network_is_flagged_by_epoch_3():
    """lr 0.03 kills the digits CNN (val accuracy 0.10 from epoch 1 on)."""
    assert max(val_accuracies("lr_10x")) < 0.15
    fired = first_alerts("lr_10x")
    assert fired["TrainingStalled"][0] <= 3
    assert fired["SpectralNormBlowUp"] == (1, "warning")


def test_a_network_that_does_not_learn_is_flagged_at_epoch_2():
    assert max(val_accuracies("lr_tiny")) < 0.15
    assert first_alerts("lr_tiny")["TrainingStalled"] == (2, "warning")


def test_a_frozen_layer_is_named_although_the_losses_look_fine():
    assert val_accuracies("frozen")[-1] > 0.9
    from svd_callback.alerts import default_rules
    from svd_callback.sinks.history_rows import replay_alerts

    frozen = [a for a in replay_alerts(load("frozen"), default_rules(traps=False))
              if a.rule == "LayerFrozen"]
    assert [(a.layer, a.epoch) for a in frozen] == [("features.2", 2)]


def test_the_replay_reproduces_the_online_alerts_of_the_rules_it_ran_with():
    """The histories were written by the callback with the rules of their time; replaying the
    rules that did not change (SpectralNormBlowUp) gives the same alerts (the replay is
    faithful)."""
    from svd_callback.alerts import SpectralNormGrowth
    from svd_callback.sinks.history_rows import replay_alerts

    analyses = load("lr_10x")
    online = [(alert.layer, alert.epoch) for a in analyses for alert in a.alerts
              if alert.rule == "SpectralNormBlowUp"]
    rule = SpectralNormGrowth(factor=10.0, min_epoch=0, name="SpectralNormBlowUp")
    # the online rules raised one alert per layer; one alert now names the layers together
    replayed = [(layer, a.epoch) for a in replay_alerts(analyses, [rule]) for layer in a.layers]
    assert replayed == online != []
