"""Heat maps and class figures read at TensorBoard's card width: labelled axes, a colour bar
naming its quantity and unit, tick labels of at least 10 pt on an image at most 1000 px wide,
and a figure with nothing to draw saying why (checked on the drawn figure objects)."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from svd_callback.sinks.class_figures import hypergraph_figure, overlap_matrix_figure
from svd_callback.sinks.figures import spectrum_heatmap, spectrum_heatmap_grid

CARD_PX = 1000  # an image no wider than this is shown at its own size in an image card
MIN_TICK_PT = 10


def _draw(figure: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def _texts(figure: Figure) -> str:
    return "\n".join(t.get_text() for t in figure.findobj(lambda o: hasattr(o, "get_text")))


def _check_legible(figure: Figure) -> None:
    image = _draw(figure)
    assert image.shape[1] <= CARD_PX
    for axes in figure.axes:
        labels = [*axes.get_xticklabels(), *axes.get_yticklabels()]
        shown = [t for t in labels if t.get_text()]
        assert all(t.get_fontsize() >= MIN_TICK_PT for t in shown), axes.get_title()


def _spectra(n: int) -> list[np.ndarray]:
    return [np.sort(np.random.default_rng(k).random(16))[::-1] + 0.01 for k in range(n)]


def test_heatmap_grid_has_labelled_axes_and_a_colour_bar_with_its_unit():
    layers = ["conv1", "conv2", "fc1", "fc2"]
    figure = spectrum_heatmap_grid(layers, [[0.0, 1.0, 2.0]] * 4, [_spectra(3)] * 4)
    _check_legible(figure)
    panels, colour_bar = figure.axes[:4], figure.axes[4]
    assert "log10(sigma / max sigma)" in colour_bar.get_ylabel()
    assert "decades" in colour_bar.get_ylabel()
    assert all("rank fraction" in panels[i].get_ylabel() for i in (0, 3))  # first column
    assert all("epoch" in panels[i].get_xlabel() for i in (1, 2, 3))  # bottom of each column


def test_single_heatmap_is_labelled_and_an_empty_one_says_why():
    figure = spectrum_heatmap([0.0, 1.0], _spectra(2), title="fc1")
    _check_legible(figure)
    axes, colour_bar = figure.axes
    assert "epoch" in axes.get_xlabel() and "rank fraction" in axes.get_ylabel()
    assert "decades" in colour_bar.get_ylabel()
    empty = spectrum_heatmap([0.0, 1.0], [np.zeros(4), np.full(4, np.nan)], title="dead")
    assert "nothing to draw" in _texts(empty)
    assert len(empty.axes) == 1  # no colour bar for an empty scale


def test_grid_panel_without_spectrum_says_so():
    figure = spectrum_heatmap_grid(["a", "b"], [[0.0], [0.0]], [_spectra(1), [np.zeros(4)]])
    assert "no finite" in _texts(figure)
    assert "nothing to draw" in _texts(spectrum_heatmap_grid([], [], []))


def test_overlap_heatmap_is_labelled_and_the_dead_runs_all_nan_matrix_says_why():
    jaccard = np.array([[1.0, 0.25, 0.0], [0.25, 1.0, 0.5], [0.0, 0.5, 1.0]])
    figure = overlap_matrix_figure(jaccard, title="overlap")
    _check_legible(figure)
    axes, colour_bar = figure.axes
    assert axes.get_xlabel() == "class" and axes.get_ylabel() == "class"
    assert "Jaccard" in colour_bar.get_ylabel() and "no unit" in colour_bar.get_ylabel()
    dead = overlap_matrix_figure(np.full((3, 3), np.nan), title="dead")
    _draw(dead)
    assert "no class has a hyperedge" in _texts(dead)
    assert not dead.axes[0].images  # nothing drawn as an empty matrix


def test_hypergraph_labels_are_legible_and_an_empty_one_says_why():
    figure = hypergraph_figure({0: frozenset({0, 1}), 1: frozenset({1, 2})}, 4, 2, title="h")
    image = _draw(figure)
    assert image.shape[1] <= CARD_PX
    sizes = [t.get_fontsize() for t in figure.axes[0].texts]
    assert sizes and min(sizes) >= MIN_TICK_PT
    assert "nothing to draw" in _texts(hypergraph_figure({}, 0, 3))
