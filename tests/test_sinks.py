"""Sinks: tag names, the history file, TensorBoard writing (read back with TensorBoard's own
reader), figures and the custom-scalar layout."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from helpers import layout_of
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

from svd_callback.report import LayerReport
from svd_callback.sinks import tags
from svd_callback.sinks.figures import (
    esd_figure,
    esd_figure_for,
    mp_density,
    spectrum_heatmap,
    spectrum_quantiles,
)
from svd_callback.sinks.history import HistoryFile, read_history, to_json
from svd_callback.sinks.tensorboard import TensorBoardSink


# ---------------------------------------------------------------------------- tags
def test_tags_follow_the_fixed_patterns():
    assert tags.layer_tag("alpha", "features.0", "unfold", "unfold") == "spectral/alpha/features.0"
    assert (
        tags.layer_tag("alpha", "features.0", "operator", "unfold")
        == "spectral/alpha.operator/features.0"
    )
    assert tags.summary_tag("alpha_mean", "unfold", "unfold") == "all_layers/alpha_mean"
    secondary = tags.summary_tag("alpha_mean", "slices", "unfold")
    assert secondary == "all_layers/alpha_mean.slices"
    # the aggregates' tags of runs logged before still read back
    assert tags.parse_tag("spectral_summary/alpha_mean.slices") == (
        tags.SUMMARY_LAYER, "alpha_mean", "slices")
    assert tags.parse_tag("all_layers/alpha_mean") == (tags.SUMMARY_LAYER, "alpha_mean", None)
    assert tags.spectrum_tag("operator", "fc") == "spectra/operator/fc"
    assert tags.clean_layer_name("a b/c:1") == "a_b/c_1"


def test_custom_scalar_regex_selects_one_metric_and_mode():
    all_tags = [
        "spectral/alpha/features.0",
        "spectral/alpha/fc",
        "spectral/alpha_hill/fc",
        "spectral/alpha.operator/fc",
        "spectral_summary/alpha_mean",
    ]
    primary = re.compile(tags.custom_scalar_regex("alpha", "unfold", "unfold"))
    operator = re.compile(tags.custom_scalar_regex("alpha", "operator", "unfold"))
    assert [t for t in all_tags if primary.search(t)] == all_tags[:2]
    assert [t for t in all_tags if operator.search(t)] == ["spectral/alpha.operator/fc"]


def test_descriptions_name_mode_normalization_and_fit():
    text = tags.metric_description("alpha", "operator", "raw", "ks")
    assert "operator" in text and "normalization raw" in text and "KS" in text
    text = tags.summary_description("alpha_mean", "slices", "ww", "hill", ww_compat=True)
    assert "mean" in text and "slices" in text and "ww" in text and "Hill" in text
    assert "no power-law fit" in tags.conventions("unfold", "per_row", None)


def test_metric_groups_cover_the_documented_names():
    assert tags.metrics_for_groups(["powerlaw"])[0] == "alpha"
    assert set(tags.metrics_for_groups(tags.METRIC_GROUPS)) <= set(tags.METRIC_DESCRIPTIONS)


# ---------------------------------------------------------------------------- history
def test_history_appends_json_lines_with_null_for_non_finite(tmp_path):
    path = tmp_path / "sub" / "h.jsonl"
    history = HistoryFile(path)
    size = history.append([{"a": 1.5, "b": math.nan, "c": (1, 2), "t": torch.tensor([1.0, 2.0])}])
    assert size == path.stat().st_size == history.size()
    history.append([{"a": math.inf, "np": np.float32(2.5), "flag": np.bool_(True)}])
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"a": 1.5, "b": None, "c": [1, 2], "t": [1.0, 2.0]},
        {"a": None, "np": 2.5, "flag": True},
    ]


def test_read_history_drops_a_partial_last_line_and_truncate_cuts_back(tmp_path):
    history = HistoryFile(tmp_path / "h.jsonl")
    first = history.append([{"step": 0}])
    history.append([{"step": 1}, {"step": 2}])
    with open(history.path, "a") as handle:
        handle.write('{"step": 3, "trunc')
    assert [r["step"] for r in read_history(history.path)] == [0, 1, 2]
    assert history.truncate(first)
    assert [r["step"] for r in read_history(history.path)] == [0]
    assert not history.truncate(first)


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
))
@settings(max_examples=60, deadline=None)
def test_to_json_is_always_strict_json(value):
    json.dumps(to_json(value), allow_nan=False)


# ---------------------------------------------------------------------------- tensorboard
def test_tensorboard_sink_writes_scalars_with_descriptions_once(tmp_path, read_events):
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer)
    sink.scalars({"spectral/alpha/fc": 3.25, "spectral/alpha/conv": 4.0}, 0,
                 {"spectral/alpha/fc": "alpha; conv mode unfold"})
    sink.scalars({"spectral/alpha/fc": 2.5}, 7, {"spectral/alpha/fc": "alpha; conv mode unfold"})
    writer.close()
    acc = read_events(tmp_path)
    events = acc.Scalars("spectral/alpha/fc")
    assert [(e.step, e.value) for e in events] == [(0, 3.25), (7, 2.5)]
    assert [(e.step, e.value) for e in acc.Scalars("spectral/alpha/conv")] == [(0, 4.0)]
    metadata = acc.SummaryMetadata("spectral/alpha/fc")
    assert metadata.plugin_data.plugin_name == "scalars"
    assert metadata.summary_description == "alpha; conv mode unfold"
    assert acc.SummaryMetadata("spectral/alpha/conv").summary_description == ""


def test_tensorboard_sink_histogram_text_figure_and_layout(tmp_path, read_events):
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer, histogram_buckets=16)
    values = np.array([0.5, 1.0, 1.5, 2.0, 8.0, np.nan])
    sink.histogram("spectra/unfold/fc", values, 3, description="singular values")
    sink.histogram("spectra/unfold/empty", np.array([np.nan]), 3)
    sink.text("alerts", "| a | b |\n|---|---|\n| 1 | 2 |", 3, description="alerts")
    sink.figure("spectral_figures/esd/unfold/fc", esd_figure(np.arange(1.0, 50.0)), 3)
    layout = layout_of(["alpha"], ["unfold", "operator"], ["alpha_mean"])
    sink.layout(layout)
    writer.close()
    acc = read_events(tmp_path)
    (hist,) = acc.Tensors("spectra/unfold/fc")
    buckets = tensor_util.make_ndarray(hist.tensor_proto)
    assert buckets.shape == (5, 3)  # 5 values: at most 5 buckets (histogram_buckets)
    assert buckets[:, 2].sum() == 5  # the NaN is dropped
    assert buckets[0, 0] == 0.5 and buckets[-1, 1] == 8.0
    assert acc.SummaryMetadata("spectra/unfold/fc").plugin_data.plugin_name == "histograms"
    assert "spectra/unfold/empty" not in acc.Tags()["tensors"]
    (text,) = acc.Tensors("alerts")
    assert tensor_util.make_ndarray(text.tensor_proto).item().decode().startswith("| a | b |")
    (image,) = acc.Images("spectral_figures/esd/unfold/fc")
    assert image.width > 100 and image.height > 100
    (config,) = acc.Tensors("custom_scalars__config__")
    parsed = layout_pb2.Layout()
    parsed.ParseFromString(tensor_util.make_ndarray(config.tensor_proto).item())
    assert parsed == layout  # closed sections and margin charts kept
    assert [(c.title, c.closed) for c in parsed.category] == [
        ("alerts", False), ("all layers [unfold]", False), ("all layers [operator]", True),
        ("alpha [unfold]", True), ("alpha [operator]", True)]
    chart = parsed.category[4].chart[0]
    assert chart.title == "alpha [operator]: x"
    assert list(chart.multiline.tag) == [r"^spectral/alpha\.operator/(x)$"]


def test_layout_charts_one_mode_each_and_margin_charts_reversed():
    """One mode per chart; TensorBoard shows a category's margin charts in reverse, so they are
    written in reverse rank order (key metrics shown first)."""
    from svd_callback.sinks.layout import layout_dict

    layout = layout_of(["alpha"], ["unfold", "slices"], ["n_layers", "alpha_mean",
                                                         "stable_rank_mean"])
    charts = layout_dict(layout)
    assert list(charts["all layers [unfold]"]) == ["n_layers", "stable_rank_mean", "alpha_mean"]
    assert charts["all layers [slices]"]["alpha_mean"] == [
        "Margin", ["all_layers/alpha_mean.slices"] * 3]
    assert charts["alerts"][
        "alerts/active: rules in force now (line); alerts/total: raised so far (top of the band)"
    ] == ["Margin", ["alerts/active", "alerts/active", "alerts/total"]]


# ---------------------------------------------------------------------------- figures
@pytest.mark.parametrize("q", [1.0, 2.0, 4.0])
def test_mp_density_integrates_to_one(q):
    s2 = 0.7
    lo, hi = s2 * (1 - 1 / math.sqrt(q)) ** 2, s2 * (1 + 1 / math.sqrt(q)) ** 2
    total, _ = integrate.quad(lambda x: mp_density(np.array([x]), s2, q)[0], lo, hi, limit=200)
    assert total == pytest.approx(1.0, abs=2e-3)


def test_mp_density_matches_gaussian_matrix_spectrum():
    """Eigenvalues of X^T X / N, X an N x M standard Gaussian matrix, follow MP(s^2 = 1, Q)."""
    generator = torch.Generator().manual_seed(0)
    n, m = 2000, 500
    x = torch.randn(n, m, generator=generator, dtype=torch.float64)
    eigs = np.sort(torch.linalg.eigvalsh(x.T @ x / n).numpy())
    grid = np.linspace(eigs[0] * 0.9, eigs[-1] * 1.1, 4000)
    cdf = integrate.cumulative_trapezoid(mp_density(grid, 1.0, n / m), grid, initial=0.0)
    empirical = np.searchsorted(eigs, grid, side="right") / m
    assert np.max(np.abs(cdf - empirical)) < 0.02


def test_esd_figure_draws_the_fits_it_is_given():
    eigs = np.random.default_rng(0).pareto(2.5, 400) + 1.0
    figure = esd_figure(eigs, alpha=3.5, xmin=1.5, mp_s2=1.0, q=2.0, title="t")
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert any(label.startswith("power law, alpha 3.50") for label in labels)
    assert any(label.startswith("MP bulk") for label in labels)
    assert figure.axes[0].get_xscale() == "log" and figure.axes[0].get_yscale() == "log"
    bare = esd_figure(eigs, alpha=math.nan, xmin=None)
    assert [line.get_label() for line in bare.axes[0].get_lines()] == ["ESD, 400 eigenvalues"]
    empty = esd_figure(np.array([0.0, -1.0, np.nan]))
    assert "no positive eigenvalues" in empty.axes[0].texts[0].get_text()


def test_esd_figure_for_reads_a_layer_report():
    record = LayerReport(
        "fc", "linear", "unfold", svals=torch.linspace(3.0, 0.1, 40), matrix_shape=(80, 40),
        metrics={"alpha": 2.5, "xmin": 0.5, "mp_s2": 0.3},
    )
    figure = esd_figure_for(record, "conv mode unfold", epoch=3)
    axes = figure.axes[0]
    assert "fc" in axes.get_title() and "epoch 3" in axes.get_title()
    assert len(axes.get_lines()) == 4  # ESD, power law, xmin marker, MP bulk


@given(st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=300),
       st.integers(2, 64))
@settings(max_examples=60, deadline=None)
def test_spectrum_quantiles_keep_the_ends_and_order(values, n_points):
    svals = np.array(values)
    out = spectrum_quantiles(svals, n_points)
    assert out.shape == (n_points,)
    assert out[0] == pytest.approx(svals.max()) and out[-1] == pytest.approx(svals.min())
    assert np.all(np.diff(out) <= 1e-9 * max(1.0, svals.max()))


def test_spectrum_heatmap_is_log_sigma_over_the_global_max():
    spectra = [np.array([4.0, 2.0, 1.0]), np.array([8.0, 2.0, 0.5])]
    figure = spectrum_heatmap([0.0, 1.0], spectra, title="fc")
    mesh = figure.axes[0].collections[0]
    data = np.asarray(mesh.get_array()).reshape(3, 2)
    expected = np.log10(np.stack(spectra, axis=1) / 8.0)
    np.testing.assert_allclose(data, expected)


def test_scalar_descriptions_survive_tensorboards_migration(tmp_path, read_events):
    """TensorBoard converts simple_value summaries to tensors on load; the description and the
    scalar plugin must come through (python loader; the Rust loader keeps metadata that sets a
    data class)."""
    from tensorboard import data_compat
    from tensorboard.compat.proto import summary_pb2

    writer = SummaryWriter(str(tmp_path))
    TensorBoardSink(writer).scalars({"spectral/alpha/fc": 3.0}, 0, {"spectral/alpha/fc": "how"})
    writer.close()
    acc = read_events(tmp_path)
    value = summary_pb2.Summary.Value(tag="spectral/alpha/fc", simple_value=3.0)
    value.metadata.CopyFrom(acc.SummaryMetadata("spectral/alpha/fc"))
    assert value.metadata.data_class == summary_pb2.DATA_CLASS_SCALAR
    migrated = data_compat.migrate_value(value)
    assert migrated.metadata.summary_description == "how"
    assert migrated.metadata.plugin_data.plugin_name == "scalars"
    assert float(tensor_util.make_ndarray(migrated.tensor)) == 3.0


def test_spectrum_heatmap_grid_shares_one_colour_scale_from_the_data():
    from svd_callback.sinks.figures import spectrum_heatmap_grid

    spectra = [[np.array([4.0, 2.0]), np.array([8.0, 1.0])], [np.array([1.0, 0.5])]]
    figure = spectrum_heatmap_grid(["a", "b"], [[0.0, 1.0], [0.0]], spectra, decades=None)
    meshes = [axes.collections[0] for axes in figure.axes[:2]]
    assert [m.get_clim() for m in meshes] == [(math.log10(1 / 8), 0.0)] * 2
    np.testing.assert_allclose(np.asarray(meshes[1].get_array()).ravel(), [0.0, math.log10(0.5)])
    deep = spectrum_heatmap_grid(["a"], [[0.0]], [[np.array([1.0, 1e-6])]], decades=None)
    assert deep.axes[0].collections[0].get_clim() == (-3.0, 0.0)


def test_spectrum_heatmaps_of_two_runs_share_the_fixed_default_scale():
    """Two runs whose spectra span -1.2 and -1.6 decades get the same colour for the same
    ratio: the default scale is -2..0 for every run (a scale fitted to each run drew them with
    -1.2 and -1.6 as the darkest colour)."""
    from svd_callback.sinks.figures import HEATMAP_DECADES, spectrum_heatmap_grid

    run_a = [[np.array([1.0, 10 ** -1.2])]]
    run_b = [[np.array([1.0, 10 ** -1.6])]]
    limits = [spectrum_heatmap_grid(["fc"], [[0.0]], run).axes[0].collections[0].get_clim()
              for run in (run_a, run_b)]
    assert limits == [(-HEATMAP_DECADES, 0.0)] * 2
    deep = spectrum_heatmap_grid(["fc"], [[0.0]], [[np.array([1.0, 1e-5])]])
    assert deep.axes[0].collections[0].get_clim() == (-2.0, 0.0)
    # values below the scale are drawn in the lowest colour and the bar says so with an arrow
    assert np.asarray(deep.axes[0].collections[0].get_array()).min() == -2.0
    assert deep.axes[-1]._colorbar.extend == "min"
    shallow = spectrum_heatmap_grid(["fc"], [[0.0]], run_a)
    assert shallow.axes[-1]._colorbar.extend == "neither"
    wide = spectrum_heatmap_grid(["fc"], [[0.0]], [[np.array([1.0, 1e-5])]], decades=4.0)
    assert wide.axes[0].collections[0].get_clim() == (-4.0, 0.0)
    with pytest.raises(ValueError, match="decades"):
        spectrum_heatmap_grid(["fc"], [[0.0]], run_a, decades=0.0)


def test_heatmap_grid_title_is_wrapped_inside_the_image():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from svd_callback.sinks.figures import spectrum_heatmap_grid

    title = ("singular values across training [unfold] up to epoch 8, step 184: log10(sigma / "
             "layer max) vs epochs trained, rows = rank fraction")
    figure = spectrum_heatmap_grid(["a", "b"], [[0.0, 1.0]] * 2,
                                   [[np.array([2.0, 1.0]), np.array([3.0, 1.0])]] * 2,
                                   title=title)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    box = figure._suptitle.get_window_extent(canvas.get_renderer())
    width, height = figure.get_size_inches() * figure.dpi
    assert box.x0 >= 0 and box.x1 <= width and box.y1 <= height
    assert " ".join(figure._suptitle.get_text().split()) == title


def test_histogram_buckets_follow_sturges_and_freedman_diaconis_capped_by_n():
    """Closed forms (numpy's "auto": the larger count of the two rules), at most n."""
    from svd_callback.sinks.tensorboard import histogram_buckets

    def expected(values, most=64):
        n = values.size
        span = values.max() - values.min()
        sturges = math.ceil(math.log2(n) + 1)
        q75, q25 = np.percentile(values, [75, 25])
        fd = math.ceil(span / (2 * (q75 - q25) * n ** (-1 / 3))) if q75 > q25 else 0
        return min(max(sturges, fd), n, most)

    rng = np.random.default_rng(0)
    for n in (3, 10, 16, 64, 500, 5000):
        values = np.log10(np.sort(rng.gamma(2.0, size=n)))
        assert histogram_buckets(values) == expected(values), n
    assert histogram_buckets(np.log10(np.linspace(1, 2, 10))) <= 10  # not 64 buckets
    assert histogram_buckets(np.array([1.0, 1.0, 1.0])) == 1
    assert histogram_buckets(np.array([2.0])) == 1
    assert histogram_buckets(rng.standard_normal(100_000), most=64) == 64


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-6, 6, allow_nan=False), min_size=1, max_size=300))
def test_histogram_buckets_are_between_one_and_n(values):
    from svd_callback.sinks.tensorboard import histogram_buckets

    count = histogram_buckets(np.array(values), most=64)
    assert 1 <= count <= min(len(values), 64)
