"""Matplotlib figures of the class-level analysis (no pyplot: plain ``Figure`` objects).

- :func:`hypergraph_figure`: one layer's class-overlap hypergraph drawn as its bipartite
  incidence graph: classes on the left, the top-k SVD-neurons (by decreasing sigma) on the
  right, a line from each class to every neuron of its hyperedge; class-specific neurons (in
  exactly one edge) are drawn in the colour of their class, shared ones in grey with their degree.
  HyperNetX's rubber-band drawing was not used: with ten heavily overlapping edges it is
  unreadable and slow, and its spring layout draws from numpy's global generator (which the
  monitor must not touch). This drawing is deterministic.
- :func:`overlap_matrix_figure`: the class x class Jaccard matrix of the hyperedges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from svd_callback.sinks.figures import (
    FIG_DPI,
    LABEL_PT,
    TICK_PT,
    TITLE_PT,
    fit_title,
    note_empty,
)

OVERLAP_LABEL = "Jaccard overlap |E_a & E_b| / |E_a | E_b| (0 to 1, no unit)"
"""Colour-bar label of the class overlap heat map."""


def _class_colours(n: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N) for i in range(n)])


def hypergraph_figure(
    edges: Mapping[int, frozenset[int]],
    n_nodes: int,
    num_classes: int,
    *,
    title: str = "",
) -> Figure:
    """Bipartite drawing of a class-overlap hypergraph (classes left, neurons right)."""
    n_nodes = max(int(n_nodes), 0)
    num_classes = max(int(num_classes), 0)
    height = max(5.0, 0.22 * max(n_nodes, num_classes) + 1.6)
    figure = Figure(figsize=(10.0, height), dpi=FIG_DPI)
    axes = figure.add_subplot()
    axes.set_title(fit_title(title, 10.0 * 0.75, TITLE_PT), fontsize=TITLE_PT)
    axes.set_axis_off()
    if n_nodes == 0 or num_classes == 0:
        note_empty(axes, "nothing to draw: no hyperedges (no classes or no neurons)")
        return figure
    colours = _class_colours(num_classes)
    degree = np.zeros(n_nodes, dtype=int)
    for edge in edges.values():
        for node in edge:
            if 0 <= node < n_nodes:
                degree[node] += 1
    class_y = np.linspace(1.0, 0.0, num_classes) if num_classes > 1 else np.array([0.5])
    node_y = np.linspace(1.0, 0.0, n_nodes) if n_nodes > 1 else np.array([0.5])
    segments, segment_colours = [], []
    for c, edge in sorted(edges.items()):
        if not 0 <= c < num_classes:
            continue
        for node in sorted(edge):
            if 0 <= node < n_nodes:
                segments.append([(0.0, class_y[c]), (1.0, node_y[node])])
                segment_colours.append(colours[c])
    if segments:
        axes.add_collection(LineCollection(segments, colors=segment_colours, linewidths=0.8,
                                           alpha=0.55))
    has_edge = np.array([c in edges for c in range(num_classes)])
    axes.scatter(np.zeros(num_classes), class_y, s=60, c=colours, edgecolors="black",
                 linewidths=np.where(has_edge, 0.5, 0.0), zorder=3)
    for c in range(num_classes):
        size = len(edges[c]) if c in edges else 0
        label = f"class {c} ({size})" if c in edges else f"class {c} (no edge)"
        axes.text(-0.04, class_y[c], label, ha="right", va="center", fontsize=TICK_PT)
    node_colours = np.tile(np.array([[0.75, 0.75, 0.75, 1.0]]), (n_nodes, 1))
    node_colours[degree == 0] = (1.0, 1.0, 1.0, 1.0)
    for node in range(n_nodes):
        if degree[node] == 1:
            c = next(c for c, e in edges.items() if node in e)
            node_colours[node] = colours[c] if 0 <= c < num_classes else (0, 0, 0, 1)
    axes.scatter(np.ones(n_nodes), node_y, s=28, c=node_colours, edgecolors="black",
                 linewidths=0.5, zorder=3)
    for node in range(n_nodes):
        axes.text(1.04, node_y[node], f"{node}: deg {degree[node]}", ha="left", va="center",
                  fontsize=TICK_PT - 2, fontweight="bold" if degree[node] == 1 else "normal")
    axes.set_xlim(-0.55, 1.4)
    axes.set_ylim(-0.05, 1.05)
    covered = int((degree > 0).sum())
    specific = int((degree == 1).sum())
    axes.text(0.5, -0.04, f"{specific} class-specific of {covered} covered neurons "
              f"({n_nodes} nodes)", ha="center", va="top", fontsize=TICK_PT,
              transform=axes.transAxes)
    return figure


def overlap_matrix_figure(jaccard: np.ndarray, *, title: str = "") -> Figure:
    """Heat map of a (C, C) class x class Jaccard matrix, values written in the cells (NaN rows:
    classes without a hyperedge, left blank)."""
    matrix = np.asarray(jaccard, dtype=np.float64)
    n = matrix.shape[0] if matrix.ndim == 2 else 0
    side = max(6.0, 0.5 * n + 2.0)
    width = min(side + 1.6, 10.0)
    figure = Figure(figsize=(width, min(side, 10.0)), dpi=FIG_DPI)
    axes = figure.add_subplot()
    axes.set_title(fit_title(title, width * 0.7, TITLE_PT), fontsize=TITLE_PT)
    if n == 0:
        note_empty(axes, "nothing to draw: no classes")
        return figure
    if not np.isfinite(matrix).any():
        axes.set_axis_off()
        note_empty(axes, "nothing to draw: no class has a hyperedge at this analysis,\n"
                   "so every Jaccard overlap is undefined (NaN)")
        return figure
    image = axes.imshow(np.ma.masked_invalid(matrix), vmin=0.0, vmax=1.0, cmap="magma_r")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label(OVERLAP_LABEL, fontsize=LABEL_PT)
    colorbar.ax.tick_params(labelsize=TICK_PT)
    axes.set_xticks(range(n))
    axes.set_yticks(range(n))
    axes.tick_params(labelsize=TICK_PT)
    axes.set_xlabel("class", fontsize=LABEL_PT)
    axes.set_ylabel("class", fontsize=LABEL_PT)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                if math.isfinite(value):
                    axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=TICK_PT - 2,
                              color="white" if value > 0.6 else "black")
    return figure
