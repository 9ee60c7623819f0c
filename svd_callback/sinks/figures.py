"""Matplotlib figures of layer spectra (no pyplot: figures are plain ``Figure`` objects).

- :func:`esd_figure`: the empirical spectral density of lambda on log-log axes, with the fitted
  power-law tail rho(lambda) ~ lambda^-alpha (lambda >= xmin) and the Marchenko-Pastur bulk
  rho(x) = Q / (2 pi s^2 x) sqrt((lambda_+ - x)(x - lambda_-)), lambda_+- = s^2 (1 +- 1/sqrt Q)^2
  (Martin & Mahoney 2021).
- :func:`spectrum_heatmap`: one layer's spectrum across analyses: column = one analysis,
  row = rank fraction i / n, colour = log10(sigma_i / the layer's max sigma over all analyses)
  on a fixed scale of :data:`HEATMAP_DECADES` decades by default, so that two runs' heat maps
  compare; :func:`spectrum_heatmap_grid` draws every layer so, one small panel each.

TensorBoard shows an image :data:`GRID_PX` pixels wide in its IMAGES and Time Series grids,
whatever its own width: the ESD figures are drawn small (600 x 400 px) with text that stays
at least :data:`MIN_GRID_TEXT_PX` pixels high there; titles are wrapped to the figure's width
(:func:`fit_title`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FuncFormatter,
    LogFormatterSciNotation,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from svd_callback.report import LayerReport

GRID_PX = 350
"""Width in pixels at which TensorBoard (2.21) shows an image in its IMAGES grid (Time Series:
323 to 375), whatever the image's own width: a 1000 px figure is shrunk to 35 %."""
MIN_GRID_TEXT_PX = 9.0
"""Smallest text height (font size in pixels) a figure's text keeps when shown GRID_PX wide."""
FIGSIZE = (6.0, 4.0)
FIG_DPI = 100
"""ESD figures: 600 x 400 px, shown at 58 % in TensorBoard's grid."""
TITLE_PT, LABEL_PT, TICK_PT = 13, 13, 12
"""Font sizes of the ESD figures (points at FIG_DPI): 12 pt is 16.7 px, 9.7 px at GRID_PX."""


def grid_text_px(fontsize_pt: float, figure_width_px: float, dpi: float = FIG_DPI) -> float:
    """Height in screen pixels of ``fontsize_pt`` text in a figure ``figure_width_px`` wide
    when TensorBoard shows it :data:`GRID_PX` wide (it scales a narrower image up, too):
    ``pt * dpi / 72 * GRID_PX / width``."""
    return fontsize_pt * dpi / 72.0 * GRID_PX / figure_width_px


def fit_title(text: str, width_in: float, fontsize_pt: float) -> str:
    """``text`` wrapped at spaces (existing line breaks kept) so that each line fits a figure
    ``width_in`` inches wide: at most ``width_in * 72 / (0.6 * fontsize_pt)`` characters a line
    (0.6 em: a wide average character of DejaVu Sans, matplotlib's default font)."""
    chars = max(10, int(width_in * 72.0 / (0.6 * fontsize_pt)))
    return "\n".join(textwrap.fill(line, chars) if line else line
                     for line in text.split("\n"))


def spectrum_quantiles(svals: np.ndarray, n_points: int = 128) -> np.ndarray:
    """Descending singular values resampled to ``n_points`` rank fractions (linear in rank)."""
    svals = np.sort(np.asarray(svals, dtype=np.float64).ravel())[::-1]
    if svals.size == 0:
        return np.full(n_points, np.nan)
    if svals.size <= n_points:
        grid = np.linspace(0.0, 1.0, n_points)
        return np.interp(grid, np.linspace(0.0, 1.0, svals.size), svals) if svals.size > 1 else (
            np.full(n_points, svals[0])
        )
    positions = np.linspace(0.0, svals.size - 1, n_points)
    return np.interp(positions, np.arange(svals.size), svals)


def mp_density(x: np.ndarray, s2: float, q: float) -> np.ndarray:
    """Marchenko-Pastur density for aspect ratio Q = N / M >= 1 and scale s^2 (zero outside)."""
    lam_minus = s2 * (1.0 - 1.0 / math.sqrt(q)) ** 2
    lam_plus = s2 * (1.0 + 1.0 / math.sqrt(q)) ** 2
    inside = (x > lam_minus) & (x < lam_plus)
    out = np.zeros_like(x, dtype=np.float64)
    xi = x[inside]
    out[inside] = q / (2.0 * math.pi * s2 * xi) * np.sqrt((lam_plus - xi) * (xi - lam_minus))
    return out


def esd_figure(
    eigenvalues: np.ndarray,
    *,
    alpha: float | None = None,
    xmin: float | None = None,
    mp_s2: float | None = None,
    q: float | None = None,
    title: str = "",
    subtitle: str = "",
    no_fit: str = "",
) -> Figure:
    """ESD histogram (density, log-spaced bins) on log-log axes with the power-law and MP fits,
    600 x 400 px with 12-13 pt text (legible in TensorBoard's grid); ``no_fit``: why there is no
    power-law fit (shown)."""
    eigs = np.asarray(eigenvalues, dtype=np.float64).ravel()
    eigs = eigs[np.isfinite(eigs) & (eigs > 0)]
    figure = Figure(figsize=FIGSIZE, dpi=FIG_DPI)
    axes = figure.add_subplot()
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("eigenvalue lambda", fontsize=LABEL_PT)
    axes.set_ylabel("density", fontsize=LABEL_PT)
    axes.tick_params(which="both", labelsize=TICK_PT)
    axes.set_title(fit_title(title + (f"\n{subtitle}" if subtitle else ""), FIGSIZE[0],
                             TITLE_PT), fontsize=TITLE_PT)
    if eigs.size == 0:
        axes.text(0.5, 0.5, "no positive eigenvalues", transform=axes.transAxes, ha="center",
                  fontsize=LABEL_PT)
        return figure
    lo, hi = eigs.min(), eigs.max()
    if hi <= lo:
        hi = lo * 1.01
    bins = np.geomspace(lo, hi, max(10, min(80, int(2 * math.sqrt(eigs.size)))))
    density, edges = np.histogram(eigs, bins=bins, density=True)
    centres = np.sqrt(edges[:-1] * edges[1:])
    shown = density > 0
    axes.plot(centres[shown], density[shown], "o", markersize=3.5, color="tab:blue",
              label=f"ESD, {eigs.size} eigenvalues")
    grid = np.geomspace(lo, hi, 400)
    if _finite(alpha) and _finite(xmin) and xmin > 0 and alpha > 1:
        tail = grid[grid >= xmin]
        frac = float(np.mean(eigs >= xmin))
        pdf = frac * (alpha - 1.0) / xmin * (tail / xmin) ** (-alpha)
        axes.plot(tail, pdf, color="tab:red", label=f"power law, alpha {alpha:.2f}")
        axes.axvline(xmin, color="tab:red", linestyle=":", linewidth=1, label=f"xmin {xmin:.3g}")
    elif no_fit:
        axes.text(0.98, 0.98, fit_title(f"no power-law fit: {no_fit}", FIGSIZE[0] * 0.8,
                                        TICK_PT),
                  transform=axes.transAxes, ha="right", va="top", fontsize=TICK_PT,
                  color="tab:red")
    if _finite(mp_s2) and _finite(q) and mp_s2 > 0 and q >= 1:
        mp = mp_density(grid, mp_s2, q)
        axes.plot(grid[mp > 0], mp[mp > 0], color="tab:green", label=f"MP bulk, Q {q:.2f}")
    log_ticks(axes.xaxis, lo, hi)
    log_ticks(axes.yaxis, *_positive_range(density))
    axes.legend(fontsize=TICK_PT, loc="best", handlelength=1.2, borderpad=0.3,
                labelspacing=0.25, framealpha=0.8)
    figure.tight_layout(pad=0.3)
    return figure


def log_ticks(axis, lo: float, hi: float) -> None:
    """Log-axis ticks that are read as numbers: decades labelled with minor ticks at 2..9, and
    when ``[lo, hi]`` spans under a decade (where a decade-only axis shows one tick or none),
    plain labels at 1, 2, 3 and 5 times the powers of ten."""
    axis.set_major_locator(LogLocator(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
    if hi / lo < 10:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    else:
        axis.set_major_formatter(LogFormatterSciNotation())
    axis.set_minor_formatter(NullFormatter())


def _positive_range(values: np.ndarray) -> tuple[float, float]:
    positive = values[values > 0]
    return (float(positive.min()), float(positive.max())) if positive.size else (1.0, 10.0)


def esd_figure_for(
    record: LayerReport, conventions: str = "", epoch: float | None = None,
    step: int | None = None,
) -> Figure:
    """:func:`esd_figure` of an analysed :class:`LayerReport` (its metrics give the fits, its
    notes why a fit is missing); the title names the epoch and the step."""
    eigs = record.eigenvalues
    metrics = record.metrics
    q = None
    if record.matrix_shape and record.matrix_shape[1] > 0:
        q = record.matrix_shape[0] / record.matrix_shape[1]
    parts = ([] if epoch is None else [f"epoch {epoch:g}"]) + (
        [] if step is None else [f"step {step}"])
    when = f" ({', '.join(parts)})" if parts else ""
    alpha = metrics.get("alpha")
    no_fit = "" if _finite(alpha) else record.notes.get("alpha", "no fit computed")
    return esd_figure(
        np.zeros(0) if eigs is None else eigs.detach().cpu().numpy(),
        alpha=metrics.get("alpha"),
        xmin=metrics.get("xmin"),
        mp_s2=metrics.get("mp_s2"),
        q=q,
        title=f"ESD {record.name} [{record.mode}]{when}",
        subtitle=conventions,
        no_fit=no_fit,
    )


HEATMAP_LABEL = "log10(sigma / max sigma) [decades; 0 = largest]"
"""Colour-bar label of the spectrum heat maps: the quantity and its unit."""
HEATMAP_X, HEATMAP_Y = "epoch (epochs trained)", "rank fraction i / n"
"""Axis labels of the spectrum heat maps."""
HEATMAP_WIDTH_IN = 10.0
"""Width of a heat-map figure (1000 px at FIG_DPI)."""
HEATMAP_TITLE_PT, HEATMAP_LABEL_PT, HEATMAP_TICK_PT = 15, 14, 12
"""Font sizes of the heat maps (points at FIG_DPI)."""
HEATMAP_DECADES = 2.0
"""Default colour scale of the heat maps: log10(sigma / max sigma) from -2 (1 % of the
largest singular value; smaller values take the lowest colour) to 0, the same in every run."""


def heatmap_floor(panels: Sequence[np.ndarray | None], decades: float | None,
                  data_floor: float = -3.0) -> float:
    """The lowest value of a heat map's colour scale: ``-decades`` (a fixed scale, the same for
    every run), or with ``decades`` None the smallest finite value of ``panels`` but not below
    ``data_floor`` (a scale fitted to this run)."""
    if decades is not None:
        if not math.isfinite(decades) or decades <= 0:
            raise ValueError(f"decades must be a positive number or None, got {decades!r}")
        return -float(decades)
    lows = [float(np.nanmin(p)) for p in panels if p is not None and np.isfinite(p).any()]
    return min(max(data_floor, min(lows)) if lows else data_floor, -1e-3)


def note_empty(axes, reason: str) -> None:
    """Write ``reason`` in the middle of ``axes`` (a figure with nothing to draw says why)."""
    axes.text(0.5, 0.5, reason, ha="center", va="center", fontsize=LABEL_PT, wrap=True,
              transform=axes.transAxes, color="dimgray")


def spectrum_heatmap(
    epochs: Sequence[float],
    spectra: Sequence[np.ndarray],
    *,
    title: str = "",
    xlabel: str = HEATMAP_X,
    decades: float | None = HEATMAP_DECADES,
) -> Figure:
    """Heat map of one layer's resampled spectra (:func:`spectrum_quantiles`) across analyses,
    coloured from ``-decades`` to 0 (:func:`heatmap_floor`)."""
    figure = Figure(figsize=(HEATMAP_WIDTH_IN, 6.0), dpi=FIG_DPI)
    axes = figure.add_subplot()
    axes.set_title(fit_title(title, HEATMAP_WIDTH_IN * 0.8, HEATMAP_TITLE_PT),
                   fontsize=HEATMAP_TITLE_PT)
    axes.set_xlabel(xlabel, fontsize=HEATMAP_LABEL_PT)
    axes.set_ylabel(HEATMAP_Y, fontsize=HEATMAP_LABEL_PT)
    axes.tick_params(labelsize=HEATMAP_TICK_PT)
    logs = _log_ratios(spectra) if len(spectra) else None
    if logs is None or not np.isfinite(logs).any():
        note_empty(axes, "nothing to draw: no analysis has a finite nonzero singular value")
        return figure
    vmin = heatmap_floor([logs], decades)
    mesh = _heatmap_panel(axes, epochs, logs, vmin=vmin)
    colorbar = figure.colorbar(mesh, ax=axes, extend=_extend(logs, vmin))
    colorbar.set_label(HEATMAP_LABEL, fontsize=HEATMAP_LABEL_PT)
    colorbar.ax.tick_params(labelsize=HEATMAP_TICK_PT)
    return figure


def spectrum_heatmap_grid(
    layers: Sequence[str],
    epochs: Sequence[Sequence[float]],
    spectra: Sequence[Sequence[np.ndarray]],
    *,
    title: str = "",
    decades: float | None = HEATMAP_DECADES,
) -> Figure:
    """Every layer's spectrum across analyses, one panel per layer (:func:`spectrum_heatmap`
    layout), on one colour scale log10(sigma / layer's max sigma) from ``-decades`` to 0 (with
    ``decades`` None: from the smallest value shown, but not below -3; :func:`heatmap_floor`).
    Axis labels on the outer panels, one colour bar (an arrow at its foot when values lie below
    the scale); the title wrapped to the width; a panel or a figure with nothing to draw says
    why."""
    n = max(1, len(layers))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    title = fit_title(title, HEATMAP_WIDTH_IN * 0.95, HEATMAP_TITLE_PT)
    head_in = 0.35 + 0.3 * (title.count("\n") + 1) if title else 0.35
    height = 2.9 * rows + 0.75 + head_in
    figure = Figure(figsize=(HEATMAP_WIDTH_IN, height), dpi=FIG_DPI)
    figure.subplots_adjust(left=0.09, right=0.83, bottom=0.6 / height + 0.06,
                           top=1 - head_in / height, wspace=0.3, hspace=0.6)
    figure.suptitle(title, fontsize=HEATMAP_TITLE_PT)
    panels = [_log_ratios(s) if len(s) else None for s in spectra]
    vmin = heatmap_floor(panels, decades)
    mesh = None
    if not layers:
        note_empty(figure.add_subplot(), "nothing to draw: no layer analysed yet")
        return figure
    for i, name in enumerate(layers):
        axes = figure.add_subplot(rows, cols, i + 1)
        axes.set_title(name, fontsize=HEATMAP_LABEL_PT)
        axes.tick_params(labelsize=HEATMAP_TICK_PT)
        if i % cols == 0:
            axes.set_ylabel(HEATMAP_Y, fontsize=HEATMAP_LABEL_PT - 2)
        if i + cols >= len(layers):
            axes.set_xlabel(HEATMAP_X, fontsize=HEATMAP_LABEL_PT - 2)
        if panels[i] is not None and np.isfinite(panels[i]).any():
            mesh = _heatmap_panel(axes, epochs[i], panels[i], vmin=vmin)
        else:
            axes.set_xticks([])
            axes.set_yticks([])
            note_empty(axes, "no finite\nspectrum")
    if mesh is not None:
        cax = figure.add_axes((0.86, 0.15, 0.02, 0.7))
        below = [_extend(p, vmin) for p in panels if p is not None]
        colorbar = figure.colorbar(mesh, cax=cax, extend="min" if "min" in below else "neither")
        colorbar.set_label(HEATMAP_LABEL, fontsize=HEATMAP_LABEL_PT - 2)
        colorbar.ax.tick_params(labelsize=HEATMAP_TICK_PT)
    return figure


def _extend(logs: np.ndarray, vmin: float) -> str:
    """``"min"`` (an arrow at the colour bar's foot) when finite values lie below ``vmin``."""
    finite = logs[np.isfinite(logs)]
    return "min" if finite.size and float(finite.min()) < vmin else "neither"


def _log_ratios(spectra: Sequence[np.ndarray]) -> np.ndarray:
    """(points, analyses) matrix of log10(sigma / max sigma over all analyses); NaN where
    undefined."""
    matrix = np.stack([np.asarray(s, dtype=np.float64) for s in spectra], axis=1)
    top = np.nanmax(matrix) if np.isfinite(matrix).any() else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(matrix / top)
    logs[~np.isfinite(logs)] = np.nan
    return logs


def _heatmap_panel(axes, epochs: Sequence[float], logs: np.ndarray, vmin: float):
    logs = np.maximum(logs, vmin)
    x = np.asarray(epochs, dtype=np.float64)
    if x.size > 1:
        mids = (x[1:] + x[:-1]) / 2
        x_edges = np.concatenate([[x[0] - (mids[0] - x[0])], mids, [x[-1] + (x[-1] - mids[-1])]])
    else:
        x_edges = np.array([x[0] - 0.5, x[0] + 0.5])
    y_edges = np.linspace(0.0, 1.0, logs.shape[0] + 1)
    mesh = axes.pcolormesh(x_edges, y_edges, logs, cmap="viridis", shading="flat", vmin=vmin,
                           vmax=0.0)
    axes.set_ylim(1.0, 0.0)
    if np.all(x == np.round(x)):  # whole epochs: no 2.5 on the axis
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return mesh


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
