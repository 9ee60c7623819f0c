"""Alerts a reader sees in TensorBoard: the cumulative ``alerts/total`` and ``alerts/rule/<rule>``
series (a rule's from its first alert on), the ``alerts`` text written from the first analysis
(the state first, the rules table once), the ``spectral/reasons`` text and the fixed
custom-scalar category order."""

from __future__ import annotations

import torch
from helpers import layout_of
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.util import tensor_util

from svd_callback.alerts import AlertEngine, CallableRule
from svd_callback.alerts.layer_rules import AlphaAbove
from svd_callback.config import AnalysisConfig, MonitorConfig
from svd_callback.examples import SmallCNN
from svd_callback.monitor.alert_text import reasons_text, rules_markdown
from svd_callback.monitor.class_stage import ClassStage
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.publisher import Publisher
from svd_callback.monitor.runner import AnalysisRunner
from svd_callback.report import LayerReport, Report

FIRES_AT = {1, 3}  # epochs at which the test rule raises one alert


def _odd(history, epoch, step):
    return ["test alert"] if epoch in FIRES_AT else []


def _rules():
    return [CallableRule(_odd, name="Odd"), AlphaAbove(threshold=60.0, patience=4)]


def _run(tmp_path, engine, publisher, epochs, version, state=None):
    guard = Guard()
    runner = AnalysisRunner(publisher.config.analysis, engine, ClassStage(None, None, guard),
                            guard, keep_svals=False)
    if state is not None:  # a resumed run
        runner.load_state_dict(state)
    logger = TensorBoardLogger(tmp_path, name="tb", version=version)
    torch.manual_seed(0)
    model = SmallCNN()
    metrics: dict[str, torch.Tensor] = {}
    for index, epoch in enumerate(epochs):
        result = runner.run(model, step=10 * epoch, epochs_trained=float(epoch),
                            trigger="train_epoch_end")
        publisher.publish(result, loggers=[logger], callback_metrics=metrics,
                          current_epoch=epoch, index=index)
    publisher.finish([logger], len(epochs) - 1)
    return logger, metrics, runner


def _publisher(engine):
    config = MonitorConfig(AnalysisConfig(metrics=("norms", "powerlaw")), figures_every_n=0,
                           histograms=False, history_file=None)
    guard = Guard()
    return Publisher(config, ClassStage(None, None, guard), guard, engine=engine)


def _text(acc, tag):
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode())
            for e in acc.Tensors(tag)]


def test_cumulative_alert_series_text_from_the_first_analysis_and_resume(tmp_path, read_events):
    engine = AlertEngine(_rules())
    logger, metrics, runner = _run(tmp_path, engine, _publisher(engine), [0, 1, 2, 3], 0)
    acc = read_events(logger.log_dir)
    # oracle: the rule fires at epochs 1 and 3 -> per analysis 0 1 0 1, cumulative 0 1 1 2
    assert [e.value for e in acc.Scalars("alerts/total")] == [0, 1, 1, 2]
    assert [(e.step, e.value) for e in acc.Scalars("alerts/rule/Odd")] == [
        (10, 1), (20, 1), (30, 2)]  # from its first alert on
    scalars = acc.Tags()["scalars"]
    assert "alerts/rule/AlphaAbove" not in scalars  # never fired: no flat chart
    assert "alerts/count" not in scalars and float(metrics["alerts/count"]) == 1.0
    assert float(metrics["alerts/total"]) == 2.0 and float(metrics["alerts/rule/Odd"]) == 2.0
    assert float(metrics["alerts/rule/AlphaAbove"]) == 0.0
    assert "cumulative" in acc.SummaryMetadata("alerts/total").summary_description

    texts = _text(acc, "alerts")
    assert [step for step, _ in texts] == [0, 10, 20, 30]  # present from the first analysis
    first, second, third, _ = (text for _, text in texts)
    assert first.startswith("**Healthy**") and "test alert" not in first
    assert "AlphaAbove" in first and "| alpha | 60 | 4 | log |" in first
    assert second.startswith("**1 alert rule in force: Odd** at epoch 1 (step 10)")
    assert "test alert" in second and "raised Odd (warning)" in second
    assert "Raised so far: 1 (Odd 1)." in second and "| rule |" not in second
    assert third.startswith("**Healthy**") and "cleared Odd" in third
    assert "Raised so far: 1 (Odd 1)." in third

    # a resumed run (the runner's state restored from the checkpoint) continues the cumulative
    # count; a state written before the counts were kept counts the engine's alerts
    state = runner.state_dict()
    assert state["alert_totals"] == {"Odd": 2}
    for version, saved in ((1, state), (2, {k: v for k, v in state.items()
                                            if k != "alert_totals"})):
        restored = AlertEngine(_rules())
        logger, _, _ = _run(tmp_path, restored, _publisher(restored), [4, 5], version, saved)
        acc = read_events(logger.log_dir)
        assert [e.value for e in acc.Scalars("alerts/total")] == [2, 2]


def test_reasons_text_names_the_missing_metric_and_why(tmp_path, read_events):
    engine = AlertEngine([])
    logger, _, _ = _run(tmp_path, engine, _publisher(engine), [0], 0)
    acc = read_events(logger.log_dir)
    ((step, text),) = _text(acc, "spectral/reasons")
    assert step == 0
    # SmallCNN's classifier has 10 singular values: no tail fit below 20 eigenvalues
    assert "classifier [unfold] alpha missing: too few eigenvalues for a tail fit " \
           "(10 < 20)" in text
    assert _text(acc, "alerts")[0][1].startswith("**Healthy**")
    assert "no alert rules are active" in _text(acc, "alerts")[0][1]


def test_reasons_text_lists_skipped_layers_and_says_when_nothing_is_missing():
    fine = LayerReport(name="a", kind="linear", mode="unfold", metrics={"alpha": 3.0})
    assert "every logged metric has a value" in reasons_text(Report([fine]), ["alpha"])
    skipped = LayerReport(name="b_c", kind="conv", mode="operator", reason="no input size")
    nan = LayerReport(name="d", kind="linear", mode="unfold", metrics={"alpha": float("nan")})
    text = reasons_text(Report([fine, skipped, nan]), ["alpha"])
    assert "b\\_c [operator] not analysed: no input size" in text
    assert "d [unfold] alpha missing: no reason recorded" in text
    assert "- a " not in text


def test_rules_table_escapes_markdown_and_marks_missing_settings():
    table = rules_markdown([CallableRule(_odd, name="odd_*rule")])
    assert "| odd\\_\\*rule | - | - | - | log |" in table


def test_layout_categories_are_in_a_fixed_order_alerts_aggregates_then_layers():
    layout = layout_of(["alpha", "log_norm"], ["unfold", "operator"], ["alpha_mean"], ["jac"])
    assert [(c.title, c.closed) for c in layout.category] == [
        ("alerts", False), ("all layers [unfold]", False), ("all layers [operator]", True),
        ("alpha [unfold]", True), ("log_norm [unfold]", True), ("alpha [operator]", True),
        ("log_norm [operator]", True), ("classes", True)]
    (active,) = layout.category[0].chart
    series = active.margin.series[0]
    assert (series.value, series.lower, series.upper) == (
        "alerts/active", "alerts/active", "alerts/total")
    (alpha,) = layout.category[1].chart
    assert alpha.margin.series[0].value == "all_layers/alpha_mean"
    assert layout.category[2].chart[0].margin.series[0].value == "all_layers/alpha_mean.operator"
    assert list(layout.category[5].chart[0].multiline.tag) == [
        r"^spectral/alpha\.operator/(x)$"]

