"""``alerts/active`` is a level (the warning/stop conditions in force: fired, not cleared),
``alerts/raised`` the event count of one analysis, ``alerts/healthy_step`` the step of an
analysis with no condition in force (-1 otherwise).

The expected sequences are read off planted metric series, by hand: a rule fires once when its
condition has held for ``patience`` analyses and re-arms when it clears."""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping

from svd_callback import SpectralMonitor
from svd_callback.alerts import (
    AlertEngine,
    AlphaAbove,
    CallableRule,
    Condition,
    Hysteresis,
    Rule,
    TrainingStalled,
    TrapsAppeared,
)
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.monitor.gather import gather_conditions
from svd_callback.monitor.result import AnalysisResult
from svd_callback.monitor.scalars import ACTIVE, HEALTHY_STEP, RAISED
from svd_callback.report import LayerReport, Report

ALERT_ACTIVE_TAG, ALERT_RAISED_TAG, HEALTHY_STEP_TAG = ACTIVE.tag, RAISED.tag, HEALTHY_STEP.tag


def _report(metric: str, value: float) -> Report:
    return Report([LayerReport("fc", "linear", "unfold", metrics={metric: value})])


def _replay(engine: AlertEngine, metric: str, series, start: int = 0):
    """(level, raised, healthy_step) after each analysis of a planted one-layer series, through
    the tag values the monitor logs (``monitor.scalars.analysis_scalars``)."""
    from svd_callback.config import AnalysisConfig, MonitorConfig
    from svd_callback.monitor.scalars import analysis_scalars

    out = []
    for epoch, value in enumerate(series, start):
        alerts = engine.update(epoch, 10 * epoch, _report(metric, value))
        result = AnalysisResult(step=10 * epoch, epoch=epoch, epochs_trained=float(epoch),
                                trigger="train_epoch_end", seconds=0.0,
                                report=_report(metric, value), summary={}, alerts=tuple(alerts),
                                active=tuple(engine.active()))
        records = analysis_scalars(result, MonitorConfig(AnalysisConfig(metrics=("norms",))), "")
        assert all(s.model_level for s in records if s.name in ("active", "raised",
                                                                  "healthy_step"))
        values = {s.tag: s.value for s in records}
        out.append((values[ALERT_ACTIVE_TAG], values[ALERT_RAISED_TAG],
                    values[HEALTHY_STEP_TAG]))
    return out


def _levels(rows):
    return [row[0] for row in rows], [row[1] for row in rows]


def test_a_condition_holding_three_analyses_reads_a_level_not_an_event():
    engine = AlertEngine([AlphaAbove(threshold=6.0, patience=1, min_epoch=0)])
    rows = _replay(engine, "alpha", [3.0, 7.0, 7.5, 8.0, 3.0])
    assert _levels(rows) == ([0, 1, 1, 1, 0], [0, 1, 0, 0, 0])
    assert [row[2] for row in rows] == [0, -1, -1, -1, 40]
    assert (ALERT_ACTIVE_TAG, ALERT_RAISED_TAG, HEALTHY_STEP_TAG) == (
        "alerts/active", "alerts/raised", "alerts/healthy_step")


def test_the_level_rises_only_once_the_rule_fired_after_its_patience():
    engine = AlertEngine([AlphaAbove(threshold=6.0, patience=2, min_epoch=0)])
    rows = _replay(engine, "alpha", [7.0, 7.0, 7.0, 3.0, 7.0, 7.0])
    assert _levels(rows) == ([0, 1, 1, 0, 0, 1], [0, 1, 0, 0, 0, 1])


def test_no_evidence_leaves_a_condition_in_force():
    engine = AlertEngine([AlphaAbove(threshold=6.0, patience=1, min_epoch=0)])
    rows = _replay(engine, "alpha", [7.0, math.nan, 7.0, 3.0])
    assert _levels(rows) == ([1, 1, 1, 0], [1, 0, 0, 0])


def test_a_condition_seen_before_the_rule_armed_is_not_in_force():
    # start_armed=False: traps present from the first analysis never fired; they must clear,
    # then appear, to count
    engine = AlertEngine([TrapsAppeared(min_traps=1)])
    rows = _replay(engine, "num_traps", [2.0, 2.0, 0.0, 3.0, 3.0, 0.0])
    assert _levels(rows) == ([0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 0])


def test_an_info_rule_never_counts():
    engine = AlertEngine([AlphaAbove(threshold=6.0, patience=1, min_epoch=0, action="info")])
    rows = _replay(engine, "alpha", [7.0, 7.0, 3.0])
    assert _levels(rows) == ([0, 0, 0], [0, 0, 0])
    assert [a.severity for a in engine.alerts_so_far] == ["info"]
    assert [row[2] for row in rows] == [0, 10, 20]


def test_a_rule_without_hysteresis_counts_while_it_raises():
    def above_six(history, epoch, step):
        return "alpha above 6" if history.latest.get("fc", "alpha", "unfold") > 6 else None

    engine = AlertEngine([CallableRule(above_six)])
    rows = _replay(engine, "alpha", [3.0, 7.0, 7.0, 7.0, 3.0])
    assert _levels(rows) == ([0, 1, 1, 1, 0], [0, 1, 1, 1, 0])


class PerMetricHysteresis(Rule):
    """Keeps its hysteresis in a dict (no attribute is one) and names it explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.states = {"alpha": Hysteresis(1)}

    def hysteresis_states(self):
        return {f"states[{k}]": v for k, v in self.states.items()}

    def check(self, history, epoch, step):
        holds = history.latest.get("fc", "alpha", "unfold") > 6
        fired = self.states["alpha"].update(("fc", "unfold"), holds)
        return [self.make_alert(layer="fc", epoch=epoch, step=step)] if fired else []


def test_a_rule_names_its_hysteresis_states_through_the_interface():
    engine = AlertEngine([PerMetricHysteresis()])
    rows = _replay(engine, "alpha", [3.0, 7.0, 7.0])
    assert _levels(rows) == ([0, 1, 1], [0, 1, 0])  # a level, not an event
    assert [(c.source, c.key) for c in engine.active()] == [("states[alpha]", ("fc", "unfold"))]
    assert _levels(_replay(engine, "alpha", [3.0], start=3)) == ([0], [0])


def test_an_error_of_a_rule_counts_at_the_analysis_that_reports_it():
    def broken(history, epoch, step):
        raise RuntimeError("bad rule")

    engine = AlertEngine([CallableRule(broken)])
    rows = _replay(engine, "alpha", [3.0, 3.0])
    assert _levels(rows) == ([1, 0], [1, 0])  # reported once per distinct error


def test_the_level_survives_a_checkpoint_of_the_engine():
    series = [3.0, 7.0, 7.5, 8.0, 8.5, 3.0]
    straight = _replay(AlertEngine([AlphaAbove(patience=1, min_epoch=0)]), "alpha", series)
    first = AlertEngine([AlphaAbove(patience=1, min_epoch=0)])
    before = _replay(first, "alpha", series[:3])
    resumed = AlertEngine([AlphaAbove(patience=1, min_epoch=0)])
    resumed.load_state_dict(first.state_dict())
    assert resumed.active() == first.active() == [Condition("AlphaAbove", "_hysteresis",
                                                            ("fc", "unfold"))]
    after = _replay(resumed, "alpha", series[3:], start=3)
    assert before + after == straight
    assert _levels(after) == ([1, 1, 0], [0, 0, 0])


def test_hysteresis_state_of_three_fields_still_loads():
    # written before the fired flag: [key, streak, disarmed]
    old = Hysteresis(2)
    old.load_state_dict([[["a"], 3, True], [["b"], 1, False], [["c"], 0, True]])
    assert old.holding() == [("a",)]
    assert old.update("a", False) is False and old.holding() == []


def test_the_monitor_state_carries_the_level():
    rule = AlphaAbove(patience=1, min_epoch=0)
    monitor = SpectralMonitor(alert_rules=[rule])
    monitor.alert_engine.update(0, 0, _report("alpha", 7.0))
    restored = SpectralMonitor(alert_rules=[AlphaAbove(patience=1, min_epoch=0)])
    restored.load_state_dict(monitor.state_dict())
    assert restored.alert_engine.active() == monitor.alert_engine.active() != []


def test_conditions_without_a_process_group_are_this_rank_s_without_repeats():
    a, b = Condition("R", "_h", ("x", "unfold")), Condition("R", "alert", (None, None, None, "m"))
    assert gather_conditions([a, b, a], world_size=1) == [a, b]


def _fit(model: SmallCNN, tmp_path, epochs: int) -> tuple[pl.Trainer, SpectralMonitor]:
    pl.seed_everything(0, verbose=False)
    monitor = SpectralMonitor(alert_rules=[TrainingStalled()], metrics="norms", histograms=False,
                              figures_every_n=0)
    stop = EarlyStopping(monitor=ALERT_ACTIVE_TAG, mode="min", divergence_threshold=0.5,
                         patience=1_000_000)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[monitor, stop], default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, logger=False,
                         accelerator="cpu", devices=1)
    trainer.fit(model, DigitsDataModule())
    return trainer, monitor


def test_early_stopping_on_active_alerts_ends_a_run_that_does_not_learn(tmp_path):
    # lr 1e-6: the norms change ~1e-5 per epoch; the saved history of this run raised
    # TrainingStalled at epoch 2 (experiments/alert_rules, run lr_tiny)
    trainer, monitor = _fit(SmallCNN(lr=1e-6), tmp_path, epochs=6)
    assert trainer.current_epoch < 6
    assert float(trainer.callback_metrics[ALERT_ACTIVE_TAG]) >= 1
    assert [a.rule for a in monitor.alert_engine.alerts_so_far] == ["TrainingStalled"]


def test_active_alerts_stay_zero_in_a_healthy_run(tmp_path):
    trainer, monitor = _fit(SmallCNN(), tmp_path, epochs=6)
    assert trainer.current_epoch == 6
    assert float(trainer.callback_metrics[ALERT_ACTIVE_TAG]) == 0
    assert float(trainer.callback_metrics[HEALTHY_STEP_TAG]) == trainer.global_step
    assert monitor.alert_engine.alerts_so_far == []


def test_replayed_histories_read_zero_when_healthy_and_above_zero_when_broken():
    from experiments.alert_rules.replay import active_counts, first_alerts

    for run in ("healthy", "healthy_s1", "healthy_s2", "demo", "bn_adam", "bn_sgd_wd",
                "bn_adam_lr_10x"):
        assert all(n == 0 for _, n in active_counts(run)), run
    for run in ("lr_10x", "lr_tiny", "frozen"):
        counts = active_counts(run)
        first = min(epoch for epoch, _ in first_alerts(run).values())
        assert min(epoch for epoch, n in counts if n) == first, run
        assert sum(n for _, n in counts) >= len(first_alerts(run)), run
