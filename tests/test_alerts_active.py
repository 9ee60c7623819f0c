"""``alerts/active``: the number of warning/stop alerts of the latest analysis, a stop signal
for ``EarlyStopping`` that reads 0 while training is healthy."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping

from svd_callback import SpectralMonitor
from svd_callback.alerts import Alert, TrainingStalled
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.monitor.result import AnalysisResult
from svd_callback.monitor.values import ALERT_ACTIVE_TAG, active_alerts, is_model_level
from svd_callback.report import Report


def _result(*severities: str) -> AnalysisResult:
    alerts = tuple(Alert(rule="R", epoch=3, step=30, severity=s, message=f"m{i}")
                   for i, s in enumerate(severities))
    return AnalysisResult(step=30, epoch=3, epochs_trained=3.0, trigger="train_epoch_end",
                          seconds=0.0, report=Report([]), summary={}, alerts=alerts)


def test_active_counts_the_warnings_and_stops_of_the_latest_analysis():
    assert active_alerts(_result()) == 0
    assert active_alerts(_result("warning", "stop", "warning")) == 3
    assert is_model_level(ALERT_ACTIVE_TAG)


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
