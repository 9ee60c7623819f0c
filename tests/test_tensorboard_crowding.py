"""Fewer TensorBoard charts: layers that are not convolutions logged once (primary mode),
one aggregate per metric by default, constant metrics on request; histograms of log10 sigma."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.util import tensor_util

from svd_callback.alerts import AlertEngine
from svd_callback.config import AnalysisConfig, MonitorConfig
from svd_callback.examples import SmallCNN
from svd_callback.monitor.class_stage import ClassStage
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.publisher import Publisher
from svd_callback.monitor.runner import AnalysisRunner

CONVS = ["features.0", "features.2", "features.5"]
LINEARS = ["hidden", "classifier"]


def _publish(tmp_path, **options):
    config = MonitorConfig(AnalysisConfig(conv_mode=("unfold", "operator"), metrics=("norms",)),
                           figures_every_n=0, history_file=None, **options)
    guard = Guard()
    classes = ClassStage(None, None, guard)
    runner = AnalysisRunner(config.analysis, AlertEngine([]), classes, guard, keep_svals=True)
    torch.manual_seed(0)
    model = SmallCNN()
    runner.maybe_record_input_sizes(model)
    result = runner.run(model, step=0, epochs_trained=0.0, trigger="fit_start")
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    metrics: dict[str, torch.Tensor] = {}
    publisher = Publisher(config, classes, guard)
    publisher.publish(result, loggers=[logger], callback_metrics=metrics, current_epoch=0,
                      index=0)
    publisher.finish([logger], 0)
    return logger, metrics, result


def test_linear_layers_once_mean_only_and_no_constant_charts_by_default(tmp_path, read_events):
    logger, metrics, result = _publish(tmp_path)
    acc = read_events(logger.log_dir)
    scalars = set(acc.Tags()["scalars"])
    # the oracle: the record kinds of the report, not the selection code
    assert {r.kind for r in result.report if r.name in LINEARS} == {"linear"}
    for name in CONVS:
        assert f"spectral/stable_rank/{name}" in scalars
        assert f"spectral/stable_rank.operator/{name}" in scalars
    for name in LINEARS:
        assert f"spectral/stable_rank/{name}" in scalars
        assert not any(t.startswith("spectral/") and t.endswith(f".operator/{name}")
                       for t in scalars), name
        assert f"spectra/unfold/{name}" in acc.Tags()["tensors"]
        assert f"spectra/operator/{name}" not in acc.Tags()["tensors"]
    assert not any("matrix_rank" in t or "rank_loss" in t for t in scalars)
    summary = {t for t in scalars if t.startswith("all_layers/")}
    assert "all_layers/stable_rank_mean" in summary
    assert "all_layers/stable_rank_mean.operator" in summary
    assert not any("_median" in t for t in summary)
    # the linear layer's operator values equal its unfold ones: nothing was lost
    for name in LINEARS:
        assert result.report.get(name, "operator").metrics["stable_rank"] == pytest.approx(
            result.report.get(name, "unfold").metrics["stable_rank"])
    # callback_metrics keep every model-level value (EarlyStopping may watch the median)
    assert "all_layers/stable_rank_median" in metrics


def test_median_and_constant_metrics_on_request(tmp_path, read_events):
    logger, _, _ = _publish(tmp_path, summary_stats=("mean", "median"), constant_metrics=True)
    scalars = set(read_events(logger.log_dir).Tags()["scalars"])
    assert {"all_layers/stable_rank_median", "spectral/matrix_rank/hidden",
            "spectral/rank_loss.operator/features.0"} <= scalars


@pytest.mark.parametrize("bad", [(), ("max",), 3])
def test_summary_stats_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="summary_stats"):
        MonitorConfig(summary_stats=bad)


def test_summary_stats_accepts_a_single_name():
    assert MonitorConfig(summary_stats="median").summary_stats == ("median",)


def test_histograms_hold_log10_sigma_of_the_positive_singular_values(tmp_path, read_events):
    logger, _, result = _publish(tmp_path)
    acc = read_events(logger.log_dir)
    record = result.report.get("features.0", "operator")
    sigma = record.svals.double().numpy()
    (event,) = acc.Tensors("spectra/operator/features.0")
    buckets = tensor_util.make_ndarray(event.tensor_proto)
    # numpy's own log10 of the positive values: range and count
    positive = sigma[sigma > 0]
    assert buckets[:, 2].sum() == positive.size
    assert buckets[0, 0] == pytest.approx(float(np.log10(positive.min())))
    assert buckets[-1, 1] == pytest.approx(float(np.log10(positive.max())))
    description = acc.SummaryMetadata("spectra/operator/features.0").summary_description
    assert description.startswith("log10 of the layer's singular values")
