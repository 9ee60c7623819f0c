"""Matplotlib figures of layer spectra (no pyplot: figures are plain ``Figure`` objects).

- :func:`esd_figure`: the empirical spectral density of lambda on log-log axes, with the fitted
  power-law tail rho(lambda) ~ lambda^-alpha (lambda >= xmin) and the Marchenko-Pastur bulk
  rho(x) = Q / (2 pi s^2 x) sqrt((lambda_+ - x)(x - lambda_-)), lambda_+- = s^2 (1 +- 1/sqrt Q)^2
  (Martin & Mahoney 2021).
- :func:`spectrum_heatmap`: one layer's spectrum across analyses: column = one analysis,
  row = rank fraction i / n, colour = log10(sigma_i / the layer's max sigma over all analyses);
  :func:`spectrum_heatmap_grid` draws every layer so, one small panel each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

from svd_callback.report import LayerReport

FIGSIZE = (10.0, 6.0)
FIG_DPI = 100
"""ESD figures: 1000 x 600 px."""
TITLE_PT, LABEL_PT, TICK_PT = 15, 14, 12
"""Font sizes of the ESD figures (points at FIG_DPI)."""


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
    1000 x 600 px with 12-15 pt text; ``no_fit``: why there is no power-law fit (shown)."""
    eigs = np.asarray(eigenvalues, dtype=np.float64).ravel()
    eigs = eigs[np.isfinite(eigs) & (eigs > 0)]
    figure = Figure(figsize=FIGSIZE, dpi=FIG_DPI)
    axes = figure.add_subplot()
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("eigenvalue lambda", fontsize=LABEL_PT)
    axes.set_ylabel("density", fontsize=LABEL_PT)
    axes.tick_params(which="both", labelsize=TICK_PT)
    axes.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=TITLE_PT)
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
              label=f"ESD ({eigs.size} eigenvalues)")
    grid = np.geomspace(lo, hi, 400)
    if _finite(alpha) and _finite(xmin) and xmin > 0 and alpha > 1:
        tail = grid[grid >= xmin]
        frac = float(np.mean(eigs >= xmin))
        pdf = frac * (alpha - 1.0) / xmin * (tail / xmin) ** (-alpha)
        axes.plot(tail, pdf, color="tab:red", label=f"power law alpha={alpha:.2f}")
        axes.axvline(xmin, color="tab:red", linestyle=":", linewidth=1, label=f"xmin={xmin:.3g}")
    elif no_fit:
        axes.text(0.98, 0.98, f"no power-law fit: {no_fit}", transform=axes.transAxes,
                  ha="right", va="top", fontsize=TICK_PT, color="tab:red", wrap=True)
    if _finite(mp_s2) and _finite(q) and mp_s2 > 0 and q >= 1:
        mp = mp_density(grid, mp_s2, q)
        axes.plot(grid[mp > 0], mp[mp > 0], color="tab:green", label=f"MP bulk Q={q:.2f}")
    log_ticks(axes.xaxis, lo, hi)
    log_ticks(axes.yaxis, *_positive_range(density))
    axes.legend(fontsize=TICK_PT, loc="lower left")
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
"""Width of a heat-map figure (1000 px at FIG_DPI, TensorBoard's image card width or less)."""


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
) -> Figure:
    """Heat map of one layer's resampled spectra (:func:`spectrum_quantiles`) across analyses."""
    figure = Figure(figsize=(HEATMAP_WIDTH_IN, 6.0), dpi=FIG_DPI)
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=TITLE_PT)
    axes.set_xlabel(xlabel, fontsize=LABEL_PT)
    axes.set_ylabel(HEATMAP_Y, fontsize=LABEL_PT)
    axes.tick_params(labelsize=TICK_PT)
    logs = _log_ratios(spectra) if len(spectra) else None
    if logs is None or not np.isfinite(logs).any():
        note_empty(axes, "nothing to draw: no analysis has a finite nonzero singular value")
        return figure
    mesh = _heatmap_panel(axes, epochs, logs)
    colorbar = figure.colorbar(mesh, ax=axes)
    colorbar.set_label(HEATMAP_LABEL, fontsize=LABEL_PT)
    colorbar.ax.tick_params(labelsize=TICK_PT)
    return figure


def spectrum_heatmap_grid(
    layers: Sequence[str],
    epochs: Sequence[Sequence[float]],
    spectra: Sequence[Sequence[np.ndarray]],
    *,
    title: str = "",
    floor: float = -3.0,
) -> Figure:
    """Every layer's spectrum across analyses, one panel per layer (:func:`spectrum_heatmap`
    layout), on one colour scale log10(sigma / layer's max sigma) from the smallest value shown
    (but not below ``floor``) to 0. Axis labels on the outer panels, one colour bar; a panel or
    a figure with nothing to draw says why."""
    n = max(1, len(layers))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    figure = Figure(figsize=(HEATMAP_WIDTH_IN, 2.9 * rows + 1.1), dpi=FIG_DPI)
    figure.subplots_adjust(left=0.09, right=0.83, bottom=0.6 / (2.9 * rows + 1.1) + 0.06,
                           top=1 - 0.55 / (2.9 * rows + 1.1), wspace=0.3, hspace=0.6)
    figure.suptitle(title, fontsize=TITLE_PT)
    panels = [_log_ratios(s) if len(s) else None for s in spectra]
    lows = [np.nanmin(p) for p in panels if p is not None and np.isfinite(p).any()]
    vmin = max(floor, min(lows)) if lows else floor
    vmin = min(vmin, -1e-3)
    mesh = None
    if not layers:
        note_empty(figure.add_subplot(), "nothing to draw: no layer analysed yet")
        return figure
    for i, name in enumerate(layers):
        axes = figure.add_subplot(rows, cols, i + 1)
        axes.set_title(name, fontsize=LABEL_PT)
        axes.tick_params(labelsize=TICK_PT)
        if i % cols == 0:
            axes.set_ylabel(HEATMAP_Y, fontsize=LABEL_PT - 2)
        if i + cols >= len(layers):
            axes.set_xlabel(HEATMAP_X, fontsize=LABEL_PT - 2)
        if panels[i] is not None and np.isfinite(panels[i]).any():
            mesh = _heatmap_panel(axes, epochs[i], panels[i], vmin=vmin)
        else:
            axes.set_xticks([])
            axes.set_yticks([])
            note_empty(axes, "no finite\nspectrum")
    if mesh is not None:
        cax = figure.add_axes((0.86, 0.15, 0.02, 0.7))
        colorbar = figure.colorbar(mesh, cax=cax)
        colorbar.set_label(HEATMAP_LABEL, fontsize=LABEL_PT - 2)
        colorbar.ax.tick_params(labelsize=TICK_PT)
    return figure


def _log_ratios(spectra: Sequence[np.ndarray]) -> np.ndarray:
    """(points, analyses) matrix of log10(sigma / max sigma over all analyses); NaN where
    undefined."""
    matrix = np.stack([np.asarray(s, dtype=np.float64) for s in spectra], axis=1)
    top = np.nanmax(matrix) if np.isfinite(matrix).any() else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(matrix / top)
    logs[~np.isfinite(logs)] = np.nan
    return logs


def _heatmap_panel(axes, epochs: Sequence[float], logs: np.ndarray, vmin=None):
    if vmin is not None:
        logs = np.maximum(logs, vmin)
    x = np.asarray(epochs, dtype=np.float64)
    if x.size > 1:
        mids = (x[1:] + x[:-1]) / 2
        x_edges = np.concatenate([[x[0] - (mids[0] - x[0])], mids, [x[-1] + (x[-1] - mids[-1])]])
    else:
        x_edges = np.array([x[0] - 0.5, x[0] + 0.5])
    y_edges = np.linspace(0.0, 1.0, logs.shape[0] + 1)
    mesh = axes.pcolormesh(x_edges, y_edges, logs, cmap="viridis", shading="flat", vmin=vmin,
                           vmax=0.0 if vmin is not None else None)
    axes.set_ylim(1.0, 0.0)
    return mesh


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
