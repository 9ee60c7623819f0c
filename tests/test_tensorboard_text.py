"""Descriptions and texts as TensorBoard renders them: markdown escaped (checked with
TensorBoard's own renderer), every symbol of a convention explained, and only the metrics that
can be logged listed in the conventions text."""

from __future__ import annotations

import pytest
from tensorboard import plugin_util
from torch.utils.tensorboard import SummaryWriter

from svd_callback.config import AnalysisConfig, MonitorConfig
from svd_callback.monitor.text import conventions_markdown
from svd_callback.sinks import tags
from svd_callback.sinks.tensorboard import TensorBoardSink


def test_descriptions_render_without_emphasis_in_tensorboard(tmp_path, read_events):
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer)
    description = tags.metric_description("alpha_sigma", "unfold", "per_row", "ks")
    plain = "stars c*kh*kw and _under_ and `tick`"
    sink.scalars({"a": 1.0, "b": 2.0}, 0, {"a": description, "b": plain})
    writer.close()
    acc = read_events(tmp_path)
    for tag in ("a", "b"):
        html = plugin_util.markdown_to_safe_html(acc.SummaryMetadata(tag).summary_description)
        assert "<em>" not in html and "<strong>" not in html and "<code>" not in html, html
    html = plugin_util.markdown_to_safe_html(acc.SummaryMetadata("b").summary_description)
    assert "stars c*kh*kw and _under_ and `tick`" in html


@pytest.mark.parametrize("normalization", ["raw", "ww", "per_row"])
@pytest.mark.parametrize("mode", ["unfold", "operator", "slices"])
def test_every_symbol_of_a_description_is_explained(mode, normalization):
    text = tags.metric_description("alpha", mode, normalization, "ks")
    assert "c * sigma" not in text  # the unexplained constant of before
    assert "lambda" in text and "singular values sigma" in text
    if normalization == "per_row":
        assert "N the number of rows" in text
    if mode in ("unfold", "slices"):
        assert "kh x kw the kernel size" in text or "kh x kw kernel-position" in text


def test_conventions_list_only_metrics_that_can_be_logged():
    config = MonitorConfig(AnalysisConfig(metrics=("norms", "powerlaw")))
    logged = _logged(conventions_markdown(config, "train_epoch_end", None, ""))
    assert "alpha" in logged and "stable\\_rank" in logged
    assert "alpha\\_hill" not in logged  # only fit="hill" computes it
    assert "matrix\\_rank" not in logged and "rank\\_loss" not in logged  # constant_metrics
    hill = MonitorConfig(AnalysisConfig(metrics=("norms", "powerlaw"), fit="hill"),
                         constant_metrics=True)
    logged = _logged(conventions_markdown(hill, "train_epoch_end", None, ""))
    assert {"alpha\\_hill", "matrix\\_rank", "rank\\_loss"} <= set(logged)


def _logged(text: str) -> list[str]:
    (line,) = [line for line in text.splitlines() if line.startswith("- metric groups:")]
    return line.split("logged: ", 1)[1].split(", ")
