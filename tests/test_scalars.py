"""The typed scalars of one analysis (``monitor.scalars``): tags built from fields and read back,
the loggers' selection, the model-level set, charts and HPARAMS, checked against the tag
patterns of docs/conventions.md written out here."""

from __future__ import annotations

import math
import re

from hypothesis import given
from hypothesis import strategies as st

from svd_callback.aggregates import AGGREGATES, SUMMARY_STATS
from svd_callback.alerts import Alert
from svd_callback.analysis import summarize
from svd_callback.config import AnalysisConfig, MonitorConfig
from svd_callback.monitor import scalars as sc
from svd_callback.monitor.result import AnalysisResult
from svd_callback.report import LayerReport, Report
from svd_callback.sinks.tags import Family, Scalar, parse_tag

MODES = ("unfold", "operator")


def _result(alerts=(), totals=None) -> AnalysisResult:
    metrics = {"alpha": 3.0, "matrix_rank": 4.0, "rank_loss": 0.0, "log_norm": 0.5,
               "xmin": math.nan}
    report = Report(LayerReport(name, kind, mode, metrics=dict(metrics), quality="ok")
                    for mode in MODES for name, kind in (("conv 1", "conv2d"), ("fc", "linear")))
    return AnalysisResult(step=7, epoch=1, epochs_trained=1.0, trigger="train_epoch_end",
                          seconds=0.0, report=report, summary=summarize(report),
                          alerts=tuple(alerts), alert_totals=totals or {},
                          class_metrics={"fc": {"jaccard_mean": 0.25, "specific_neurons/3": 1.0}})


def _config(**options) -> MonitorConfig:
    return MonitorConfig(AnalysisConfig(conv_mode=MODES, metrics=("norms", "powerlaw")),
                         **options)


def test_tags_follow_the_documented_patterns():
    alert = Alert(rule="AlphaBelow", epoch=1, step=7, severity="warning", message="m")
    records = sc.analysis_scalars(_result([alert], {"AlphaBelow": 2, "LayerFrozen": 0}),
                                  _config(), "probe")
    tags = {s.tag: s for s in records}
    assert tags["spectral/alpha/conv_1"].value == 3.0  # layer name made safe
    assert tags["spectral/alpha.operator/conv_1"].mode == "operator"
    assert tags["spectral_summary/alpha_mean"].stat == "mean"
    assert tags["spectral_summary/alpha_median.operator"].metric == "alpha"
    assert tags["alerts/count"].value == 1 and tags["alerts/total"].value == 2
    assert tags["alerts/rule/AlphaBelow"].value == 2 and tags["alerts/rule/LayerFrozen"].value == 0
    assert tags["alerts/healthy_step"].value == 7 and tags["alerts/healthy_step"].float64
    assert tags["classes/jaccard_mean/fc"].value == 0.25
    assert not [t for t in tags if "specific_neurons" in t or "xmin" in t]  # per class, NaN
    assert len(tags) == len(records)  # no tag twice


def test_loggers_get_fewer_and_callback_metrics_the_model_level_values():
    records = sc.analysis_scalars(_result(), _config(), "")
    logged = {s.tag for s in records if s.logged}
    assert "spectral/alpha/fc" in logged and "spectral/alpha.operator/fc" not in logged
    assert "spectral/alpha.operator/conv_1" in logged  # a conv differs per mode
    assert "spectral/matrix_rank/conv_1" not in logged  # constant
    assert "spectral_summary/alpha_median" not in logged  # summary_stats = ("mean",)
    assert "spectral_summary/rank_loss_mean" not in logged and "spectral_summary/n_layers" in logged
    model = {s.tag for s in records if s.model_level}
    assert model == {s.tag for s in records if s.family in (Family.SUMMARY, Family.ALERTS)}
    more = sc.analysis_scalars(_result(), _config(summary_stats=("mean", "median"),
                                                  constant_metrics=True), "")
    assert {s.tag for s in more if s.logged} >= {"spectral_summary/alpha_median",
                                                 "spectral/matrix_rank/conv_1",
                                                 "spectral_summary/rank_loss_mean"}


def test_every_logged_scalar_is_on_the_chart_that_claims_it():
    alert = Alert(rule="AlphaBelow", epoch=1, step=7, severity="warning", message="m")
    config = _config()
    records = sc.analysis_scalars(_result([alert], {"AlphaBelow": 1}), config, "")
    charts = sc.layout_charts(records, config)
    for scalar in records:
        if scalar.chart is not None:
            assert re.search(scalar.chart.pattern, scalar.tag), (scalar.tag, scalar.chart)
            others = [c for c in charts if c != scalar.chart and re.search(c.pattern, scalar.tag)]
            assert not others, (scalar.tag, others)  # shown once
    sections = {c.section.name for c in charts}
    assert sections == {"spectral summary", "alerts", "spectral (unfold)",
                        "spectral (operator)", "classes"}
    assert set(sc.ALERT_CHARTS) <= charts | {sc.RULE_CHART}


def test_hparams_metrics_are_the_primary_aggregates_and_the_total():
    config = _config(summary_stats=("median",))
    metrics = sc.hparam_tags(config)
    assert metrics[-1] == "alerts/total"
    assert "spectral_summary/alpha_median" in metrics
    assert not [m for m in metrics if m.endswith((".operator", "_mean", "matrix_rank_median"))]


def test_every_declared_aggregate_has_a_kind_and_its_parts():
    for key, found in AGGREGATES.items():
        assert found.key == key
        if found.kind == "statistic":
            assert key == f"{found.metric}_{found.stat}" and found.stat in SUMMARY_STATS
        elif found.kind == "count":
            assert found.text
        else:
            assert found.label and key == "frac_" + found.label.replace("-", "_")


names = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
layers = st.from_regex(r"[a-z][a-z0-9_]{0,5}(\.[a-z0-9_]{1,4}){0,2}", fullmatch=True)


@given(names, st.sampled_from(MODES), st.booleans(), layers)
def test_a_spectral_tag_reads_back_as_its_fields(metric, mode, primary, layer):
    per_layer = Scalar(Family.LAYER, metric, 1.0, "", layer=layer, mode=mode, primary=primary)
    assert parse_tag(per_layer.tag) == (layer, metric, None if primary else mode)
    summary = Scalar(Family.SUMMARY, metric, 1.0, "", mode=mode, primary=primary)
    assert parse_tag(summary.tag) == ("<model>", metric, None if primary else mode)


def test_a_new_model_scalar_is_one_declaration(monkeypatch, tmp_path):
    """Adding a scalar touches MODEL_SCALARS alone: callback_metrics, the loggers and the
    layout take it from there."""
    from svd_callback.monitor.class_stage import ClassStage
    from svd_callback.monitor.guard import Guard
    from svd_callback.monitor.publisher import Publisher
    from svd_callback.sinks.tags import Chart

    chart = Chart(sc.ALERTS_SECTION, "alerts/layers (per analysis)", r"^alerts/layers$", (9,))
    layers = sc.ModelScalar("layers", "records of this analysis", lambda r: len(r.report),
                            chart)
    monkeypatch.setattr(sc, "MODEL_SCALARS", (*sc.MODEL_SCALARS, layers))
    config = _config(history_file=None, figures_every_n=0)
    guard = Guard()
    publisher = Publisher(config, ClassStage(None, None, guard), guard)
    metrics: dict = {}
    publisher.publish(_result(), loggers=[], callback_metrics=metrics, current_epoch=1, index=0)
    assert float(metrics["alerts/layers"]) == 4
    records = sc.analysis_scalars(_result(), config, "")
    assert chart in sc.layout_charts(records, config)
