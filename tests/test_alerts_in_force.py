"""``AlertEngine.in_force``: the alerts behind the conditions in force, each narrowed to the
layers still in force, with the epoch it was raised at. Expected values read off planted
per-layer alpha series by hand (AlphaBelow: alpha < 2 for 2 analyses fires once per layer
episode; the layers it starts in at one analysis are one alert)."""

from __future__ import annotations

from svd_callback.alerts import AlertEngine, AlphaBelow, Condition
from svd_callback.alerts.base import Alert
from svd_callback.alerts.level import ALERT_SOURCE, alert_condition, alerts_in_force
from svd_callback.report import LayerReport, Report


def _report(alphas: dict[str, float]) -> Report:
    return Report([LayerReport(name, "linear", "unfold", metrics={"alpha": alpha})
                   for name, alpha in alphas.items()])


def _run(series: list[dict[str, float]]) -> list[list[Alert]]:
    engine = AlertEngine([AlphaBelow()])
    out = []
    for epoch, alphas in enumerate(series):
        engine.update(epoch, 10 * epoch, _report(alphas))
        out.append(engine.in_force())
    return out


def test_in_force_names_the_layers_still_in_force_and_the_epoch_it_started():
    series = [
        {"a": 3.0, "b": 3.0, "c": 3.0},
        {"a": 1.5, "b": 1.6, "c": 3.0},
        {"a": 1.5, "b": 1.6, "c": 3.0},  # fires for a and b: one alert, epoch 2
        {"a": 3.0, "b": 1.6, "c": 3.0},  # a clears: b alone in force
        {"a": 3.0, "b": 1.6, "c": 1.7},
        {"a": 3.0, "b": 1.6, "c": 1.7},  # c fires at epoch 5: two alerts in force
        {"a": 3.0, "b": 3.0, "c": 3.0},  # everything clears
    ]
    states = _run(series)
    assert states[0] == states[1] == []
    (both,) = states[2]
    assert both.layers == ("a", "b") and both.epoch == 2 and both.values == (1.5, 1.6)
    (only_b,) = states[3]
    assert only_b.layers == ("b",) and only_b.layer == "b" and only_b.values == (1.6,)
    assert only_b.epoch == 2 and only_b.message == both.message  # what made it fire
    assert [(a.layers, a.epoch) for a in states[5]] == [(("b",), 2), (("c",), 5)]
    assert states[6] == []


def test_an_alert_without_hysteresis_is_its_own_condition_and_a_lost_one_is_generic():
    raised = Alert("Custom", layer="fc", mode="unfold", metric="m", value=1.0, epoch=3, step=30)
    assert alerts_in_force([alert_condition(raised)], [raised]) == [raised]
    lost = alerts_in_force([Condition("Gone", "_state", ("fc", "unfold"))], [])
    assert [(a.rule, a.layers, a.epoch) for a in lost] == [("Gone", ("fc",), None)]
    assert ALERT_SOURCE != "_state"


def test_a_model_level_condition_takes_the_rules_latest_alert_of_its_mode():
    older = Alert("Trend", mode="unfold", epoch=1, step=10)
    other = Alert("Trend", mode="operator", epoch=2, step=20)
    (found,) = alerts_in_force([Condition("Trend", "_trend", ("unfold",))], [older, other])
    assert found is older
