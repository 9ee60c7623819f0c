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


def test_the_alerts_text_starts_with_the_state_and_says_what_cleared():
    from svd_callback.monitor.alert_text import cleared_conditions, state_text

    states = _run([
        {"a": 3.0, "b": 3.0}, {"a": 1.5, "b": 1.6}, {"a": 1.5, "b": 1.6}, {"a": 3.0, "b": 1.6},
    ])
    firing, later = states[2], states[3]
    text = state_text(firing, firing, [], {"AlphaBelow": 1}, epoch=2, step=20,
                      rules=[AlphaBelow()])
    head, *rest = text.splitlines()
    assert head == "**1 alert rule in force: AlphaBelow** at epoch 2 (step 20)"
    entry = next(line for line in rest if line.startswith("- **AlphaBelow**"))
    assert "in force since epoch 2 (step 20)" in entry and "2 layers a, b [unfold]" in entry
    assert "alpha = 1.5 < 2" in entry  # the numbers against the limit, from the message
    assert "*Likely:* Martin" in text and "*Try:* compare" in text  # meaning and advice
    assert "This analysis: raised AlphaBelow (warning)." in text
    assert "| rule | metric | threshold | patience | action |" in text

    cleared = cleared_conditions(firing, later)
    assert cleared == ["AlphaBelow (a)"]
    text = state_text(later, [], cleared, {"AlphaBelow": 1}, epoch=3, step=30)
    assert "layer b [unfold]" in text and "since epoch 2" in text
    assert "This analysis: cleared AlphaBelow (a)." in text
    assert "| rule |" not in text  # the rules table is given once, at the first analysis

    healthy = state_text([], [], cleared_conditions(later, []), {"AlphaBelow": 1}, 4, 40)
    assert healthy.startswith("**Healthy**: no alert condition in force at epoch 4 (step 40)")
    assert "cleared AlphaBelow (b)" in healthy and "Raised so far: 1 (AlphaBelow 1)." in healthy
