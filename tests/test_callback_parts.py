"""The callback's parts without a Trainer (runner, publisher, guard), the settings it resolves in
``setup()`` (``check_on``, ``figure_layers``) and the size limits of its classes."""

from __future__ import annotations

import ast
import dataclasses
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

import svd_callback.monitor.runner as runner_module
from svd_callback.alerts import AlertEngine, CallableRule
from svd_callback.analysis import analyze
from svd_callback.callback import SpectralMonitor
from svd_callback.config import AnalysisConfig, MonitorConfig
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.monitor.class_stage import ClassStage
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.publisher import Publisher
from svd_callback.monitor.runner import AnalysisRunner
from svd_callback.sinks.history import read_history

PACKAGE = Path(__file__).resolve().parents[1] / "svd_callback"


def make_runner(config: AnalysisConfig, rules=(), **kwargs) -> AnalysisRunner:
    guard = Guard()
    return AnalysisRunner(config, AlertEngine(list(rules)), ClassStage(None, None, guard), guard,
                          **kwargs)


@pytest.fixture
def model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


# ---------------------------------------------------------------------------- runner
def test_runner_returns_a_frozen_record_equal_to_analyze_of_the_model(model):
    config = AnalysisConfig(conv_mode=("unfold", "slices"), metrics=("norms", "powerlaw"))
    runner = make_runner(config)
    result = runner.run(model, step=12, epochs_trained=1.5, trigger="train_step",
                        training={"val_loss": 0.5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.step = 3  # type: ignore[misc]
    assert (result.step, result.epoch, result.epochs_trained) == (12, 1, 1.5)
    expected = analyze(model, conv_mode=("unfold", "slices"), fit="ks")
    assert [(r.name, r.mode) for r in result.report] == [(r.name, r.mode) for r in expected]
    for got, want in zip(result.report, expected, strict=True):
        for key, value in want.metrics.items():
            assert math.isclose(got.metrics[key], value, rel_tol=1e-9, abs_tol=1e-12) or (
                math.isnan(value) and math.isnan(got.metrics[key])), (got.name, key)
    alphas = [r.metrics["alpha"] for r in expected.by_mode("unfold").analysed()]  # nan: no fit
    assert math.isclose(result.summary["unfold"]["alpha_mean"], float(np.nanmean(alphas)))
    assert result.alerts == () and result.class_report is None and result.world_size == 1
    # the scalars logged before (a checkpoint) stay until logged again
    later = runner.run(model, step=24, epochs_trained=2.0, trigger="train_epoch_end",
                       training={"train_loss": 0.7})
    assert later.training == {"val_loss": 0.5, "train_loss": 0.7}


def test_runner_records_conv_input_sizes_from_the_example_or_the_training_input(model):
    config = AnalysisConfig(conv_mode="operator")
    runner = make_runner(config)
    runner.maybe_record_input_sizes(model)
    expected = {"features.0": (8, 8), "features.2": (8, 8), "features.5": (4, 4)}
    assert runner.input_sizes == expected
    model.example_input_array = None
    sample = make_runner(config)
    sample.maybe_record_input_sizes(model, lambda: (torch.zeros(1, 1, 8, 8), None))
    assert sample.input_sizes == expected
    unset = make_runner(config)
    with pytest.warns(UserWarning, match="could not record conv input sizes.*example_input"):
        unset.maybe_record_input_sizes(model)
    assert unset.input_sizes == {}
    records = unset.run(model, step=0, epochs_trained=0.0, trigger="fit_start").report
    assert all(r.skipped for r in records if r.kind == "conv")


def test_runner_alerts_carry_their_ranks_and_a_failing_analysis_becomes_reasons(
    model, monkeypatch
):
    rule = CallableRule(lambda history, epoch, step: "always", name="always", action="stop")
    runner = make_runner(AnalysisConfig(), [rule])
    result = runner.run(model, step=6, epochs_trained=1.0, trigger="train_epoch_end")
    (alert,) = result.alerts
    assert alert.severity == "stop" and result.alert_ranks == ((0,),)
    assert result.raised_on(alert) == ""
    wider = dataclasses.replace(result, world_size=2)
    assert wider.raised_on(alert) == " (rank 0)"

    def broken(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(runner_module, "analyze", broken)
    with pytest.warns(UserWarning, match="solver exploded"):
        failed = make_runner(AnalysisConfig()).run(model, step=1, epochs_trained=0.1,
                                                    trigger="train_step")
    names = [name for name, _ in model.named_modules() if isinstance(
        _, torch.nn.Conv2d | torch.nn.Linear)]
    assert [r.name for r in failed.report] == names
    assert all("solver exploded" in r.reason for r in failed.report)


# ---------------------------------------------------------------------------- publisher
def test_publisher_writes_callback_metrics_logger_and_history_without_a_trainer(model, tmp_path):
    config = MonitorConfig(AnalysisConfig(metrics=("norms", "powerlaw")), figures_every_n=0)
    result = make_runner(config.analysis).run(model, step=6, epochs_trained=1.0,
                                               trigger="train_epoch_end",
                                               training={"val_loss": 0.25})
    guard = Guard()
    publisher = Publisher(config, ClassStage(None, None, guard), guard)
    history = tmp_path / "history.jsonl"
    publisher.start_history(history, resumed=False, step=0, epoch=0, world_size=1)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    metrics: dict[str, torch.Tensor] = {}
    publisher.publish(result, loggers=[logger], callback_metrics=metrics, current_epoch=0,
                      index=0)
    # callback_metrics: model-level values only, equal to the summary
    assert metrics and all(k.startswith(("all_layers/", "alerts/")) for k in metrics)
    for key, value in result.summary["unfold"].items():
        if f"all_layers/{key}" in metrics:
            assert math.isclose(float(metrics[f"all_layers/{key}"]), value, rel_tol=1e-6)
    # the logger: per-layer values under spectral/<metric>/<layer>, at the analysis's step
    frame = pd.read_csv(Path(logger.log_dir) / "metrics.csv")
    row = frame[frame["step"] == 6].iloc[0]
    hidden = result.report.get("hidden", "unfold")
    assert math.isclose(row["spectral/alpha/hidden"], hidden.metrics["alpha"], rel_tol=1e-6)
    assert "spectral/mp_softrank/hidden" not in frame.columns  # group "mp" not selected
    # the history file: the run row, one row per record, the summary and the training scalars
    rows = read_history(history)
    kinds = [r["type"] for r in rows]
    assert kinds.count("run") == 1 and kinds.count("layer") == len(result.report)
    assert kinds.count("summary") == 1
    (training,) = [r for r in rows if r["type"] == "training"]
    assert training["metrics"] == {"val_loss": 0.25} and training["step"] == 6
    assert publisher.last_result is result


def test_publisher_per_layer_values_on_request_and_a_failing_logger_is_a_warning(
    model, tmp_path
):
    config = MonitorConfig(figures_every_n=0, history_file=None)
    result = make_runner(config.analysis).run(model, step=3, epochs_trained=0.5,
                                               trigger="train_step")
    guard = Guard()
    publisher = Publisher(config, ClassStage(None, None, guard), guard,
                          per_layer_callback_metrics=True)

    class Broken:
        def log_metrics(self, metrics, step):
            raise OSError("disk full")

    metrics: dict[str, torch.Tensor] = {}
    with pytest.warns(UserWarning, match="logging to Broken failed: OSError: disk full"):
        publisher.publish(result, loggers=[Broken()], callback_metrics=metrics,
                          current_epoch=0, index=0)
    assert math.isclose(float(metrics["spectral/alpha/hidden"]),
                        result.report.get("hidden", "unfold").metrics["alpha"], rel_tol=1e-6)


def test_guard_turns_errors_into_one_warning_each_and_warns_once():
    guard = Guard()

    def fail():
        raise ValueError("bad value")

    with pytest.warns(UserWarning, match="writing failed: ValueError: bad value"):
        assert guard.call("writing", fail) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guard.warn_once("key", "first")
        guard.warn_once("key", "second")
    assert [str(w.message) for w in caught] == ["SpectralMonitor: first"]


# ---------------------------------------------------------------------------- setup
def fit(root, monitor, **trainer_kwargs):
    pl.seed_everything(0, verbose=False)
    options = dict(accelerator="cpu", devices=1, max_epochs=2, logger=False,
                   callbacks=[monitor], enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, default_root_dir=root, limit_train_batches=4,
                   limit_val_batches=1, num_sanity_val_steps=0)
    options.update(trainer_kwargs)
    trainer = pl.Trainer(**options)
    trainer.fit(SmallCNN(), DigitsDataModule(batch_size=64))
    return trainer


@pytest.mark.parametrize(
    ("trainer_kwargs", "hook", "steps"),
    [
        ({}, "train_epoch_end", [0, 4, 8]),
        ({"val_check_interval": 0.5}, "validation_epoch_end", [0, 2, 4, 6, 8]),
        ({"limit_val_batches": 0}, "train_epoch_end", [0, 4, 8]),
    ],
)
def test_check_on_none_is_resolved_in_setup_as_early_stopping_does(
    tmp_path, trainer_kwargs, hook, steps
):
    monitor = SpectralMonitor(figures_every_n=0, history_file=None)
    assert monitor.schedule.check_on is None
    fit(tmp_path, monitor, **trainer_kwargs)
    assert monitor.schedule.check_on == hook
    assert [entry["step"] for entry in monitor.summaries] == steps
    assert {e["trigger"] for e in monitor.summaries[1:]} == {hook}


def test_state_key_keeps_the_names_of_old_checkpoints():
    monitor = SpectralMonitor(conv_mode=("unfold", "operator"), check_on="train_epoch_end")
    # the key the callback wrote before MonitorConfig (arguments conv_modes=..., on=...)
    assert monitor.state_key == ("SpectralMonitor{'conv_modes': ('unfold', 'operator'), "
                                 "'on': 'train_epoch_end', 'every_n_epochs': 1, "
                                 "'every_n_steps': None}")


def test_unknown_figure_layer_names_raise_at_setup_with_the_known_layers(tmp_path):
    monitor = SpectralMonitor(figure_layers=("hidden", "hiden"), history_file=None)
    with pytest.raises(ValueError, match=r"figure_layers names unknown layer\(s\) 'hiden'.*"
                                         r"'features.0'.*'hidden'"):
        fit(tmp_path, monitor, max_epochs=1)


# ---------------------------------------------------------------------------- structure
def test_no_class_of_the_package_exceeds_400_lines_and_the_callback_350():
    sizes = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                sizes[f"{path.relative_to(PACKAGE)}:{node.name}"] = (
                    node.end_lineno - node.lineno + 1)
    assert "callback.py:SpectralMonitor" in sizes
    assert {name: n for name, n in sizes.items() if n > 400} == {}
    assert len((PACKAGE / "callback.py").read_text().splitlines()) <= 350
