"""Marchenko-Pastur bulk of an ESD: a robust scale fit, the bulk edges, Tracy-Widom margin,
spikes and MP soft rank (Martin & Mahoney, JMLR 2021; docs/methods.md#marchenko-pastur-bulk).

For an N x M matrix (N >= M, Q = N / M) with i.i.d. entries, the M eigenvalues of W^T W follow
Marchenko-Pastur with scale s2 (the bulk mean; s2 = N var(W_ij)):

    rho(x) = Q / (2 pi s2 x) * sqrt((lambda_plus - x)(x - lambda_minus)),
    lambda_pm = s2 (1 +- 1/sqrt(Q))^2.

The largest eigenvalue of a pure MP matrix fluctuates around lambda_plus on the Tracy-Widom
scale (Johnstone 2001, rescaled to these units)

    sigma_TW = s2 Q^(-1/2) (lambda_plus / s2)^(2/3) M^(-2/3)

(the margin of docs/methods.md; at s2 = 1 it is WeightWatcher's ``TW`` term, of which WeightWatcher
then uses ``sqrt(TW)``). Spikes are the eigenvalues above lambda_plus + t sigma_TW with
t = :data:`TW_SIGMAS` = 4: the Tracy-Widom law puts ~1e-4 of its mass beyond 4 of its units
(its mean is -1.2, its sd 1.3), and the fitted s2 is itself uncertain by about one unit at
M ~ 200, so a smaller t reports spurious spikes (t = 1 flagged one in 3-30% of pure Gaussian
matrices, most often pooled 3x3 slices).

The fit is analytic, not WeightWatcher's per-layer brute-force search against a KDE
(``RMT_Util.fit_density_with_range``, ~4 s per layer): quantile matching with spike trimming.
With k spikes assumed, the bulk is the M - k smallest eigenvalues and its j-th value should sit
at the unit-MP quantile q((j - 1/2) / (M - k)), so s2 = median of lambda_(j) / q_j over the
central plotting positions 0.05 .. 0.95 (robust to the spikes and to a heavy tail); k is then
recounted above the new edge plus margin, until it stops changing. The unit-MP CDF is tabulated
once per Q by quadrature on x = a + (b - a)(1 - cos t) / 2, which makes the integrand smooth.

This is the project's fit. WeightWatcher 0.7.7's own (the ``"mp"`` group with ``ww_compat``: a
KDE fit of the ESD rescaled to mean 1, a sqrt(TW) margin, a quarter-circle fit at Q = 1) is
reproduced in :func:`svd_callback.rmt.ww_compat.mp_fit` and used under ``ww_compat=True``;
docs/mp_metrics.md compares the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "CENTRAL",
    "MAX_ITERATIONS",
    "TW_SIGMAS",
    "MPFit",
    "fit_mp_bulk",
    "mp_edges",
    "mp_median",
    "mp_quantiles",
    "mp_softrank",
    "num_spikes",
    "random_stable_rank",
    "tracy_widom_margin",
]

MAX_ITERATIONS = 50
TW_SIGMAS = 4.0
"""Spike margin above lambda_plus, in Tracy-Widom units."""
CENTRAL = (0.05, 0.95)
"""Plotting positions of the bulk used to fit s2."""


@dataclass(frozen=True)
class MPFit:
    """A Marchenko-Pastur bulk fit.

    Attributes:
        s2: scale (the bulk's mean eigenvalue).
        Q: aspect ratio N / M used.
        lambda_plus, lambda_minus: bulk edges s2 (1 +- 1/sqrt(Q))^2.
        tw_margin: spike margin above lambda_plus (``tw_sigmas`` Tracy-Widom units).
        n_bulk: eigenvalues at or below lambda_plus + tw_margin.
        num_spikes: eigenvalues above lambda_plus + tw_margin.
        reason: why the fit failed (None on success; NaN fields then).
    """

    s2: float
    Q: float
    lambda_plus: float
    lambda_minus: float
    tw_margin: float
    n_bulk: int
    num_spikes: int
    reason: str | None = None

    @staticmethod
    def failed(Q: float, reason: str) -> MPFit:
        nan = math.nan
        return MPFit(nan, Q, nan, nan, nan, 0, 0, reason)


def random_stable_rank(rows: int, columns: int) -> float:
    """The stable rank ||W||_F^2 / ||W||_2^2 of an N x M random matrix of i.i.d. entries,
    N M / (sqrt N + sqrt M)^2: ||W||_F^2 = N M s^2 and, at the Marchenko-Pastur edge,
    ||W||_2^2 = s^2 (sqrt N + sqrt M)^2 (Marchenko & Pastur 1967; Geman 1980). Sampled matrices
    of 10-784 rows and columns come within 1.0-1.3 of it (the edge is reached from below)."""
    return rows * columns / (math.sqrt(rows) + math.sqrt(columns)) ** 2


def mp_edges(s2: float, Q: float) -> tuple[float, float]:
    """(lambda_minus, lambda_plus) = s2 (1 -+ 1/sqrt(Q))^2."""
    r = 1.0 / math.sqrt(Q)
    return s2 * (1.0 - r) ** 2, s2 * (1.0 + r) ** 2


def tracy_widom_margin(lambda_plus: float, s2: float, Q: float, M: int,
                       tw_sigmas: float = 1.0) -> float:
    """``tw_sigmas`` times the Tracy-Widom scale of the largest bulk eigenvalue,
    s2 Q^(-1/2) (lambda_plus / s2)^(2/3) M^(-2/3) (Johnstone 2001)."""
    if s2 <= 0 or M <= 0:
        return math.nan
    return tw_sigmas * s2 * Q**-0.5 * (lambda_plus / s2) ** (2.0 / 3.0) * M ** (-2.0 / 3.0)


@lru_cache(maxsize=256)
def _mp_cdf_table(Q: float, points: int = 4097) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) of the unit-scale MP law of ratio Q, dense near both edges (trapezoid
    quadrature in t, x = a + (b - a)(1 - cos t)/2, normalised to end at 1)."""
    y = 1.0 / Q
    a, b = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2
    t = np.linspace(0.0, math.pi, points)
    x = a + (b - a) * (1 - np.cos(t)) / 2
    half = (b - a) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        density_dt = (half * np.sin(t)) ** 2 / (2 * math.pi * y * x)
    density_dt[~np.isfinite(density_dt)] = 0.0
    if a == 0.0:  # Q = 1: sin^2 t / x -> 4 / b at t = 0
        density_dt[0] = half**2 * 4 / b / (2 * math.pi * y)
    cdf = np.concatenate([[0.0], np.cumsum((density_dt[1:] + density_dt[:-1]) / 2 * np.diff(t))])
    return x, cdf / cdf[-1]


def mp_median(Q: float) -> float:
    """Median of the unit-scale MP law of ratio Q."""
    x, cdf = _mp_cdf_table(float(Q))
    return float(np.interp(0.5, cdf, x))


def mp_quantiles(p: torch.Tensor, Q: float) -> torch.Tensor:
    """Quantiles of the unit-scale MP law at probabilities ``p`` (float64, on p's device)."""
    x, cdf = _mp_cdf_table(float(Q))
    x_t = torch.as_tensor(x, device=p.device)
    cdf_t = torch.as_tensor(cdf, device=p.device)
    p = p.to(torch.float64).clamp(0.0, 1.0)
    hi = torch.searchsorted(cdf_t, p).clamp(1, cdf_t.numel() - 1)
    lo = hi - 1
    span = (cdf_t[hi] - cdf_t[lo]).clamp(min=1e-300)
    w = ((p - cdf_t[lo]) / span).clamp(0.0, 1.0)
    return x_t[lo] + w * (x_t[hi] - x_t[lo])


def _scale(x_sorted: torch.Tensor, bulk: int, Q: float) -> float:
    """s2 from the ``bulk`` smallest eigenvalues: median of lambda_(j) / q((j - 1/2) / bulk)
    over the central plotting positions."""
    p = (torch.arange(bulk, device=x_sorted.device, dtype=torch.float64) + 0.5) / bulk
    central = (p >= CENTRAL[0]) & (p <= CENTRAL[1])
    if int(central.sum()) < 3:
        central = torch.ones_like(central)
    ratios = x_sorted[:bulk][central] / mp_quantiles(p[central], Q).clamp(min=1e-300)
    return float(ratios.median())


def fit_mp_bulk(eigs: torch.Tensor, Q: float, M: int | None = None,
                tw_sigmas: float = TW_SIGMAS) -> MPFit:
    """Fit the MP bulk of ``eigs`` (lambda = sigma^2 of an N x M matrix, Q = N / M >= 1).

    Args:
        eigs: eigenvalues, any order, any device.
        Q: aspect ratio N / M >= 1.
        M: matrix size for the Tracy-Widom scale (default: the number of eigenvalues; for a
            pooled spectrum of several matrices pass one matrix's M).
        tw_sigmas: spike margin in Tracy-Widom units.

    Zero eigenvalues beyond the rank M (a pooled or padded spectrum) should not be passed.
    Never raises on bad data: NaN fields and a reason instead.
    """
    x = torch.as_tensor(eigs).detach().reshape(-1).to(torch.float64)
    if not math.isfinite(Q) or Q < 1:
        return MPFit.failed(Q, f"aspect ratio Q = {Q} must be >= 1")
    if x.numel() < 4:
        return MPFit.failed(Q, f"fewer than 4 eigenvalues ({x.numel()})")
    if not bool(torch.isfinite(x).all()):
        return MPFit.failed(Q, "non-finite eigenvalues")
    M = int(M if M is not None else x.numel())
    x_sorted = x.sort().values
    total = x_sorted.numel()
    if float(x_sorted[total // 2]) <= 0:
        return MPFit.failed(Q, "median eigenvalue is zero (rank-deficient spectrum)")
    spikes = 0
    for _ in range(MAX_ITERATIONS):
        s2 = _scale(x_sorted, total - spikes, Q)
        _, plus = mp_edges(s2, Q)
        edge = plus + tracy_widom_margin(plus, s2, Q, M, tw_sigmas)
        found = min(int((x_sorted > edge).sum()), total // 2)
        if found == spikes:
            break
        spikes = found
    if not s2 > 0:
        return MPFit.failed(Q, "no positive bulk")
    minus, plus = mp_edges(s2, Q)
    margin = tracy_widom_margin(plus, s2, Q, M, tw_sigmas)
    n_bulk = int((x_sorted <= plus + margin).sum())
    return MPFit(s2, float(Q), plus, minus, margin, n_bulk, total - n_bulk)


def num_spikes(eigs: torch.Tensor, Q: float, M: int | None = None) -> int:
    """Eigenvalues above the fitted MP edge plus the Tracy-Widom margin (0 if the fit fails)."""
    return fit_mp_bulk(eigs, Q, M).num_spikes


def mp_softrank(eigs: torch.Tensor, Q: float, M: int | None = None) -> float:
    """lambda_plus / lambda_max of the fitted bulk (Martin & Mahoney; WeightWatcher's
    ``mp_softrank``); NaN if the fit fails."""
    fit = fit_mp_bulk(eigs, Q, M)
    top = float(torch.as_tensor(eigs).max()) if fit.reason is None else math.nan
    return fit.lambda_plus / top if top > 0 else math.nan
