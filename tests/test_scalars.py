"""The typed scalars of one analysis (``monitor.scalars``): tags built from fields and read back,
the loggers' selection, the model-level set, charts and HPARAMS, checked against the tag
patterns of docs/conventions.md written out here."""

from __future__ import annotations

import math

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
    assert tags["all_layers/alpha_mean"].stat == "mean"
    assert tags["all_layers/alpha_median.operator"].metric == "alpha"
    assert tags["alerts/count"].value == 1 and tags["alerts/total"].value == 2
    assert tags["alerts/rule/AlphaBelow"].value == 2 and tags["alerts/rule/LayerFrozen"].value == 0
    assert tags["alerts/healthy_step"].value == 7 and tags["alerts/healthy_step"].float64
    # event counts and the checkpoint helper: callback_metrics only; a rule from its first alert
    assert not any(tags[t].logged for t in ("alerts/count", "alerts/raised",
                                            "alerts/healthy_step", "alerts/rule/LayerFrozen"))
    assert tags["alerts/rule/AlphaBelow"].logged and tags["alerts/active"].logged
    assert tags["classes/jaccard_mean/fc"].value == 0.25
    assert not [t for t in tags if "specific_neurons" in t or "xmin" in t]  # per class, NaN
    assert len(tags) == len(records)  # no tag twice


def test_loggers_get_fewer_and_callback_metrics_the_model_level_values():
    records = sc.analysis_scalars(_result(), _config(), "")
    logged = {s.tag for s in records if s.logged}
    assert "spectral/alpha/fc" in logged and "spectral/alpha.operator/fc" not in logged
    assert "spectral/alpha.operator/conv_1" in logged  # a conv differs per mode
    assert "spectral/matrix_rank/conv_1" not in logged  # constant
    assert "all_layers/alpha_median" not in logged  # summary_stats = ("mean",)
    assert "all_layers/rank_loss_mean" not in logged and "all_layers/n_layers" in logged
    model = {s.tag for s in records if s.model_level}
    assert model == {s.tag for s in records if s.family in (Family.SUMMARY, Family.ALERTS)}
    more = sc.analysis_scalars(_result(), _config(summary_stats=("mean", "median"),
                                                  constant_metrics=True), "")
    assert {s.tag for s in more if s.logged} >= {"all_layers/alpha_median",
                                                 "spectral/matrix_rank/conv_1",
                                                 "all_layers/rank_loss_mean"}


def test_every_logged_scalar_is_on_the_chart_that_claims_it():
    alert = Alert(rule="AlphaBelow", epoch=1, step=7, severity="warning", message="m")
    config = _config()
    records = sc.analysis_scalars(_result([alert], {"AlphaBelow": 1}), config, "")
    charts = sc.layout_charts([s for s in records if s.logged], config)
    for scalar in (s for s in records if s.logged):
        assert scalar.chart is not None and scalar.chart.shows(scalar.tag), scalar.tag
        others = [c for c in charts if c != scalar.chart and c.shows(scalar.tag)]
        assert not others or scalar.tag == "alerts/total", (scalar.tag, others)  # shown once
    sections = {c.section.name: c.section for c in charts}
    assert set(sections) == {"alerts", "alerts by rule", "all layers [unfold]",
                             "all layers [operator]", "alpha [unfold]", "alpha [operator]",
                             "log_norm [unfold]", "log_norm [operator]", "classes"}
    assert {name for name, s in sections.items() if not s.closed} == {
        "alerts", "alerts by rule", "all layers [unfold]"}  # the rest opens on a click
    assert set(sc.ALERT_CHARTS) <= charts
    # margin charts (never smoothed) for the alert levels and the aggregates
    assert all(c.margin is not None for c in charts if c.section.name.startswith(
        ("alerts", "all layers")))
    (active,) = [c for c in charts if c.section.name == "alerts"]
    assert active.margin == ("alerts/active", "alerts/active", "alerts/total")


def test_per_layer_charts_hold_at_most_five_layers_in_model_order():
    names = [f"block{i}.conv" for i in range(12)]
    report = Report(LayerReport(name, "conv2d", "unfold", metrics={"alpha": 3.0})
                    for name in names)
    result = AnalysisResult(step=7, epoch=1, epochs_trained=1.0, trigger="train_epoch_end",
                            seconds=0.0, report=report, summary=summarize(report))
    config = MonitorConfig(AnalysisConfig(metrics=("powerlaw",)))
    alphas = [s for s in sc.analysis_scalars(result, config, "") if s.name == "alpha"
              and s.family is Family.LAYER]
    charts = sorted({s.chart for s in alphas}, key=lambda c: c.rank)
    assert [len(c.title.split(": ")[1].split(", ")) for c in charts] == [5, 5, 2]
    assert charts[0].title == "alpha [unfold]: " + ", ".join(names[:5])
    for scalar in alphas:  # each on its own group's chart only
        assert [c for c in charts if c.shows(scalar.tag)] == [scalar.chart]
    assert not charts[0].shows("spectral/alpha/block10.conv")  # no prefix match
    assert not charts[0].shows("spectral/alpha/block0.conv2")


def test_hparams_metrics_lead_with_the_state_and_the_models_metrics():
    config = _config(summary_stats=("median",))
    records = [s for s in sc.analysis_scalars(_result(), config, "") if s.logged]
    metrics = [tag for tag, _ in sc.hparam_metrics(
        records, config, ["train_loss", "val_acc", "epoch", "val_loss",
                          "all_layers/alpha_median"])]
    assert metrics[:5] == ["alerts/active", "val_acc", "val_loss", "train_loss",
                           "alerts/total"]
    assert "all_layers/alpha_median" in metrics and metrics.count("all_layers/alpha_median") == 1
    assert metrics.index("all_layers/alpha_median") < metrics.index("all_layers/log_norm_median")
    assert not [m for m in metrics if m.endswith((".operator", "_mean", "matrix_rank_median"))]
    assert "epoch" not in metrics
    assert set(metrics) <= {s.tag for s in records} | {"val_acc", "val_loss", "train_loss"}


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
