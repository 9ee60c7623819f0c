"""``alerts/healthy_step`` with Lightning's ``ModelCheckpoint`` and ``EarlyStopping`` on digits,
and the ``alerts/active`` level across a checkpoint and resume.

A planted rule holds at the analyses of known epochs, so which checkpoint must be kept is known
in advance: the analysis after training epoch ``e`` (``trainer.current_epoch == e``) has
``epoch == e + 1``; ``ModelCheckpoint`` names its file after ``current_epoch``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from helpers import digits_fit
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from svd_callback import SpectralMonitor
from svd_callback.alerts import Hysteresis, Rule
from svd_callback.monitor.scalars import ACTIVE, HEALTHY_STEP, RAISED

ALERT_ACTIVE_TAG, ALERT_RAISED_TAG, HEALTHY_STEP_TAG = ACTIVE.tag, RAISED.tag, HEALTHY_STEP.tag


class HoldsFrom(Rule):
    """Holds at the analyses of epochs ``start`` to ``stop - 1`` (all later ones with no
    ``stop``), with the built-in rules' hysteresis."""

    def __init__(self, start: int, stop: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start, self.stop = start, stop
        self._hysteresis = Hysteresis(1)

    def check(self, history, epoch, step):
        holds = epoch >= self.start and (self.stop is None or epoch < self.stop)
        return [self.make_alert(epoch=epoch, step=step)] if self._hysteresis.update(
            (), holds) else []

    def state_dict(self) -> dict[str, Any]:
        return {"hysteresis": self._hysteresis.state_dict()}

    def load_state_dict(self, state) -> None:
        self._hysteresis.load_state_dict(state.get("hysteresis", []))


class Record(Callback):
    """The monitor's values in ``callback_metrics`` at each training epoch end (after the
    analysis of that epoch, at validation or training epoch end)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        self.rows.append((trainer.current_epoch, float(m[ALERT_ACTIVE_TAG]),
                          float(m[ALERT_RAISED_TAG]), float(m[HEALTHY_STEP_TAG])))


def _monitor(rule: Rule) -> SpectralMonitor:
    return SpectralMonitor(alert_rules=[rule], metrics="norms", histograms=False,
                           figures_every_n=0, history_file=None)


FAST = dict(limit_train_batches=4, limit_val_batches=2, num_sanity_val_steps=0)


def test_model_checkpoint_keeps_the_latest_checkpoint_taken_with_no_alert_in_force(tmp_path):
    # in force from the analysis of epoch 3 on: training epochs 0 and 1 are healthy
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}",
                           monitor=HEALTHY_STEP_TAG, mode="max", save_top_k=1)
    record = Record()
    digits_fit(tmp_path, [_monitor(HoldsFrom(3)), keep, record], max_epochs=5,
               enable_checkpointing=True, **FAST)
    assert [r[1] for r in record.rows] == [0, 0, 1, 1, 1]
    assert [r[2] for r in record.rows] == [0, 0, 1, 0, 0]
    assert [r[3] for r in record.rows] == [4, 8, -1, -1, -1]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=1.ckpt"]
    assert Path(keep.best_model_path).name == "epoch=1.ckpt" and keep.best_model_score == 8
    assert torch.load(keep.best_model_path, weights_only=False)["global_step"] == 8


def test_a_healthy_step_after_an_alert_replaces_the_checkpoint(tmp_path):
    # in force at the analyses of epochs 2 and 3 only: the last epoch is healthy again
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}",
                           monitor=HEALTHY_STEP_TAG, mode="max", save_top_k=1)
    record = Record()
    digits_fit(tmp_path, [_monitor(HoldsFrom(2, 4)), keep, record], max_epochs=4,
               enable_checkpointing=True, **FAST)
    assert [r[3] for r in record.rows] == [4, -1, -1, 16]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=3.ckpt"]


def test_early_stopping_on_healthy_step_stops_after_patience_analyses_in_force(tmp_path):
    record = Record()
    stop = EarlyStopping(monitor=HEALTHY_STEP_TAG, mode="max", patience=2)
    trainer, _ = digits_fit(tmp_path, [_monitor(HoldsFrom(3)), stop, record], max_epochs=10,
                            **FAST)
    # epochs 0, 1 healthy (steps 4, 8), then two analyses without a new healthy step
    assert [r[3] for r in record.rows] == [4, 8, -1, -1]
    assert trainer.current_epoch == 4 and stop.stopped_epoch == 3


def test_the_level_survives_a_checkpoint_and_resume(tmp_path):
    last = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    first = Record()
    digits_fit(tmp_path, [_monitor(HoldsFrom(2)), last, first], max_epochs=3,
               enable_checkpointing=True, **FAST)
    assert [r[1:3] for r in first.rows] == [(0, 0), (1, 1), (1, 0)]
    monitor, resumed = _monitor(HoldsFrom(2)), Record()
    digits_fit(tmp_path, [monitor, resumed], max_epochs=5,
               ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), **FAST)
    # still in force, not raised again: the rule's state came back with the checkpoint
    assert [r[:3] for r in resumed.rows] == [(3, 1, 0), (4, 1, 0)]
    assert len(monitor.alert_engine.alerts_so_far) == 1


def test_an_info_rule_is_reported_as_information_and_leaves_the_run_healthy(tmp_path, caplog):
    record = Record()
    monitor = _monitor(HoldsFrom(2, action="info"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level(logging.INFO):
            digits_fit(tmp_path, [monitor, record], max_epochs=3, **FAST)
    assert [a.severity for a in monitor.alert_engine.alerts_so_far] == ["info"]
    assert not [w for w in caught if "SpectralMonitor alert" in str(w.message)]
    assert "SpectralMonitor alert [info] HoldsFrom" in caplog.text
    assert [r[1:] for r in record.rows] == [(0, 0, 4), (0, 0, 8), (0, 0, 12)]
