"""ESD figures a reader can use: fitted layers chosen, a note when there is no fit, >= 800 px
wide with >= 12 pt text, log axes with several labelled ticks, titles with epoch and step."""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from svd_callback.monitor.heatmaps import choose_figure_layers
from svd_callback.report import LayerReport, Report
from svd_callback.sinks.figures import esd_figure, esd_figure_for


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


def test_esd_figure_size_fonts_and_log_ticks_under_a_decade():
    rng = np.random.default_rng(0)
    figure = esd_figure(rng.uniform(2.0, 8.0, 200), title="t")
    width, _ = figure.get_size_inches() * figure.dpi
    assert width >= 800
    axes = figure.axes[0]
    assert axes.title.get_fontsize() >= 12 and axes.xaxis.label.get_fontsize() >= 12
    assert all(t.get_fontsize() >= 12 for t in axes.get_xticklabels())
    # [2, 8] is under a decade: a decade-only axis would label nothing in range
    assert len(_labels(figure, "x")) >= 2


def test_esd_figure_for_names_epoch_step_and_why_there_is_no_fit():
    svals = torch.linspace(1.0, 2.0, 9)
    record = _record("fc", math.nan, svals=svals,
                     notes={"alpha": "too few eigenvalues for a tail fit (9 < 20)"})
    figure = esd_figure_for(record, "mode unfold", epoch=3.0, step=120)
    axes = figure.axes[0]
    assert "epoch 3, step 120" in axes.get_title()
    texts = [t.get_text() for t in axes.texts]
    assert "no power-law fit: too few eigenvalues for a tail fit (9 < 20)" in texts
