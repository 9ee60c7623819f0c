"""The history file's rows owned by the records (``LayerReport.to_json``/``from_json``,
``ClassReport.rows``/``metrics_from_rows``, ``sinks.analyses``): a real run's file read back
gives the callback's own records and class statistics, and replaying its rules raises the
alerts the callback raised."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import digits_fit
from hypothesis import given
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback

from svd_callback.alerts import CallableRule, monitor_default_rules
from svd_callback.callback import SpectralMonitor
from svd_callback.classes.report import ClassReport
from svd_callback.report import REASON_CODES, LayerReport
from svd_callback.sinks.history import read_history, to_json
from svd_callback.sinks.history_rows import read_analyses, recorded_rules, replay_alerts


def _same(a, b) -> bool:
    """Equal, NaN equal to NaN, through nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) \
        or a == b


def _every(history, epoch, step):
    return f"analysis at step {step}"


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    rules = [*monitor_default_rules(("norms", "powerlaw", "traps"), class_analysis=True),
             CallableRule(_every, name="EveryAnalysis")]
    monitor = SpectralMonitor(conv_mode=("unfold", "operator"),
                              metrics=("norms", "powerlaw", "traps"),
                              class_analysis={"probe_size": 60, "top_k": 8}, figures_every_n=0,
                              alert_rules=rules, history_file=str(root / "h.jsonl"))
    results = []

    class Keep(Callback):  # after the monitor: its result of each epoch
        def on_train_epoch_end(self, trainer, pl_module):
            results.append(monitor.last_result)

    digits_fit(root, [monitor, Keep()], max_epochs=2, limit_train_batches=3,
               limit_val_batches=2, quiet=True)
    return monitor, read_history(root / "h.jsonl"), results


def test_the_file_reads_back_as_the_callbacks_records(monitored):
    monitor, rows, results = monitored
    analyses = read_analyses(rows)
    assert [(a.epoch, a.step) for a in analyses] == [(s["epoch"], s["step"])
                                                    for s in monitor.summaries]
    for analysis, result in zip(analyses[1:], results, strict=True):
        assert analysis.step == result.step
        assert len(analysis.report) == len(result.report)
        for read, made in zip(analysis.report, result.report, strict=True):
            assert (read.name, read.mode, read.kind, read.matrix_shape, read.quality) == (
                made.name, made.mode, made.kind, made.matrix_shape, made.quality)
            assert _same(read.metrics, {k: float(v) for k, v in made.metrics.items()})
        assert _same(analysis.summary, {m: dict(v) for m, v in result.summary.items()})
        assert _same(analysis.class_metrics, {k: dict(v) for k, v in
                                              result.class_metrics.items()})
        assert analysis.class_metrics  # the class rows were read
        assert [a.message for a in analysis.alerts] == [a.message for a in result.alerts]


def test_replaying_the_file_raises_the_callbacks_alerts(monitored):
    monitor, rows, _ = monitored
    rules = [*recorded_rules(rows), CallableRule(_every, name="EveryAnalysis")]
    assert [type(r).__name__ for r in rules] == [
        type(r).__name__ for r in monitor.alert_engine.rules]  # the callback's own choice
    replayed = replay_alerts(read_analyses(rows), rules)
    assert [(a.rule, a.epoch, a.message) for a in replayed] == [
        (a.rule, a.epoch, a.message) for a in monitor.alert_engine.alerts_so_far]


def test_class_statistics_round_trip_through_the_rows(monitored):
    _, _, results = monitored
    report = results[-1].class_report
    rows = json.loads(json.dumps(to_json(report.rows())))  # as the file holds them
    assert _same(ClassReport.metrics_from_rows(rows), report.record_metrics())
    assert any(k.startswith("feature_count/") for m in report.record_metrics().values()
               for k in m)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(st.dictionaries(st.sampled_from(["alpha", "D", "xmin"]), finite | st.just(math.nan)),
       st.sampled_from([None, *REASON_CODES]), st.booleans())
def test_a_layer_record_round_trips_through_json(metrics, code, skipped):
    record = LayerReport("features.0", "conv2d", "operator", "per_row", shape=(8, 1, 3, 3),
                         matrix_shape=(8, 9), input_size=(8, 8), metrics=metrics,
                         quality=None if skipped else "ok",
                         reason="why" if skipped or code else None, reason_code=code,
                         notes={"alpha": "too few"}, normalized_by="features.1",
                         svals=torch.ones(8))
    data = json.loads(json.dumps(to_json(record.to_json())))
    assert data["n_svals"] == 8
    back = LayerReport.from_json(data)
    assert back.svals is None and back.rows is None
    assert _same(back.to_json() | {"n_svals": 8}, record.to_json())


def test_an_alert_row_reads_back_with_its_nan_values():
    from svd_callback.alerts import Alert
    from svd_callback.config import AnalysisConfig
    from svd_callback.sinks.history_rows import alert_row

    alert = Alert(rule="AlphaBelow", layers=("a", "b"), mode="unfold", metric="alpha",
                  values=(1.5, math.nan), threshold=2.0, epoch=3, step=30, message="m")
    context = {"epoch": 3, "epochs_trained": 3.0, "step": 30, "trigger": "train_epoch_end"}
    row = json.loads(json.dumps(to_json(alert_row(alert, (0, 1), context, AnalysisConfig()))))
    assert row["values"] == [1.5, None] and row["ranks"] == [0, 1]
    (analysis,) = read_analyses([row])
    (back,) = analysis.alerts
    assert (back.rule, back.layers, back.threshold, back.values[0]) == (
        "AlphaBelow", ("a", "b"), 2.0, 1.5) and math.isnan(back.values[1])
