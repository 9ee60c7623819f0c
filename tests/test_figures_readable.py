"""ESD figures a reader can use: fitted layers chosen, a note when there is no fit, every text
(legend included) at least 9 px high where TensorBoard shows the image (350 px wide in its
grid), a title inside the image, log axes with several labelled ticks, titles with epoch and
step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from svd_callback.monitor.heatmaps import choose_figure_layers
from svd_callback.report import LayerReport, Report
from svd_callback.sinks.figures import (
    GRID_PX,
    MIN_GRID_TEXT_PX,
    esd_figure,
    esd_figure_for,
    grid_text_px,
)


def _record(name: str, alpha: float, **kw) -> LayerReport:
    return LayerReport(name=name, kind="linear", mode="unfold", metrics={"alpha": alpha}, **kw)


def test_figure_layers_are_taken_among_fitted_layers():
    nan = math.nan
    report = Report([_record("a", nan), _record("b", 3.0), _record("c", nan),
                     _record("d", 4.0), _record("e", nan), _record("f", 2.5)])
    assert choose_figure_layers(report, "unfold", 3) == ["b", "d", "f"]
    assert choose_figure_layers(report, "unfold", 2) == ["b", "f"]
    none_fitted = Report([_record("a", nan), _record("b", nan), _record("c", nan)])
    assert choose_figure_layers(none_fitted, "unfold", 2) == ["a", "c"]


def _labels(figure, axis: str) -> list[str]:
    FigureCanvasAgg(figure).draw()
    axes = figure.axes[0]
    ticks = axes.xaxis if axis == "x" else axes.yaxis
    lo, hi = (axes.get_xlim() if axis == "x" else axes.get_ylim())
    return [t.get_text() for t, v in zip(ticks.get_ticklabels(), ticks.get_ticklocs(),
                                         strict=True) if lo <= v <= hi and t.get_text()]


def _shown_texts(figure):
    """Every non-empty text artist of a drawn figure (titles, labels, ticks, legend, notes)."""
    FigureCanvasAgg(figure).draw()
    return [t for t in figure.findobj(lambda o: hasattr(o, "get_text") and hasattr(
        o, "get_fontsize")) if t.get_text().strip() and t.get_visible()]


def test_esd_figure_text_is_legible_at_tensorboards_grid_width_and_log_ticks_under_a_decade():
    rng = np.random.default_rng(0)
    figure = esd_figure(rng.uniform(2.0, 8.0, 200), alpha=2.5, xmin=4.0, mp_s2=3.0, q=2.0,
                        title="ESD features.0 [unfold] (epoch 8, step 184)",
                        subtitle="mode unfold, normalization raw, fit ks")
    width = figure.get_size_inches()[0] * figure.dpi
    texts = _shown_texts(figure)
    legend = figure.axes[0].get_legend()
    assert legend is not None and len(legend.get_texts()) == 4
    for text in texts:  # a 1000 px figure with 12 pt text shows it 5.8 px high
        shown = grid_text_px(text.get_fontsize(), width, figure.dpi)
        assert shown >= MIN_GRID_TEXT_PX, (text.get_text(), shown)
    # the legend's own words at grid size, e.g. "power law, alpha 2.50"
    assert any("alpha 2.50" in t.get_text() for t in legend.get_texts())
    # [2, 8] is under a decade: a decade-only axis would label nothing in range
    assert len(_labels(figure, "x")) >= 2


def test_grid_text_px_is_the_scale_tensorboard_applies():
    # 12 pt at 100 dpi is 16.67 px; a 1000 px image is shown 350 px wide, a 175 px one doubled
    assert grid_text_px(12, 1000, 100) == pytest.approx(16.667 * GRID_PX / 1000, rel=1e-3)
    assert grid_text_px(12, 175, 100) == pytest.approx(16.667 * 2, rel=1e-3)


def test_esd_titles_and_notes_stay_inside_the_image():
    long = "mode unfold, normalization spectral (sigma / sigma_max), fit ks, ww-compatible"
    figure = esd_figure(np.arange(1.0, 9.0), title="ESD classifier.final_projection [unfold] "
                        "(epoch 120, step 468000)", subtitle=long,
                        no_fit="too few eigenvalues for a tail fit (8 < 20)")
    renderer = FigureCanvasAgg(figure).get_renderer()
    FigureCanvasAgg(figure).draw()
    width = figure.get_size_inches()[0] * figure.dpi
    for text in [figure.axes[0].title, *figure.axes[0].texts]:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= width, text.get_text()


def test_esd_figure_for_names_epoch_step_and_why_there_is_no_fit():
    svals = torch.linspace(1.0, 2.0, 9)
    record = _record("fc", math.nan, svals=svals,
                     notes={"alpha": "too few eigenvalues for a tail fit (9 < 20)"})
    figure = esd_figure_for(record, "mode unfold", epoch=3.0, step=120)
    axes = figure.axes[0]
    assert "epoch 3, step 120" in axes.get_title()
    texts = [" ".join(t.get_text().split()) for t in axes.texts]  # wrapped to the width
    assert "no power-law fit: too few eigenvalues for a tail fit (9 < 20)" in texts
