"""Marchenko-Pastur bulk of an ESD: a robust scale fit, the bulk edges, Tracy-Widom margin,
spikes and MP soft rank (Martin & Mahoney, JMLR 2021; RESEARCH.md section 2).

For an N x M matrix (N >= M, Q = N / M) with i.i.d. entries, the M eigenvalues of W^T W follow
Marchenko-Pastur with scale s2 (the bulk mean):

    rho(x) = Q / (2 pi s2 x) * sqrt((lambda_plus - x)(x - lambda_minus)),
    lambda_pm = s2 (1 +- 1/sqrt(Q))^2.

The fit is analytic, not WeightWatcher's per-layer brute-force search against a KDE: s2 starts
from the median (the MP median m(Q) is tabulated once per Q by quadrature, so a few spikes barely
move it) and is refined as the mean of the eigenvalues inside the current bulk edge plus its
Tracy-Widom margin (the bulk mean of MP is s2), until the edge stops moving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

MAX_ITERATIONS = 50


@dataclass(frozen=True)
class MPFit:
    """A Marchenko-Pastur bulk fit.

    Attributes:
        s2: scale (the bulk's mean eigenvalue).
        Q: aspect ratio N / M used.
        lambda_plus, lambda_minus: bulk edges s2 (1 +- 1/sqrt(Q))^2.
        tw_margin: Tracy-Widom margin above lambda_plus.
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


def mp_edges(s2: float, Q: float) -> tuple[float, float]:
    """(lambda_minus, lambda_plus) = s2 (1 -+ 1/sqrt(Q))^2."""
    r = 1.0 / math.sqrt(Q)
    return s2 * (1.0 - r) ** 2, s2 * (1.0 + r) ** 2


def tracy_widom_margin(lambda_plus: float, s2: float, Q: float, M: int) -> float:
    """Width of the largest bulk eigenvalue's fluctuations, Q^(-1/2) lambda_+^(2/3) M^(-2/3)
    (RESEARCH.md section 2), with lambda_+ taken in units of s2 so the margin scales with s2."""
    if s2 <= 0 or M <= 0:
        return math.nan
    return s2 * Q ** -0.5 * (lambda_plus / s2) ** (2.0 / 3.0) * M ** (-2.0 / 3.0)


@lru_cache(maxsize=256)
def mp_median(Q: float, points: int = 4097) -> float:
    """Median of the unit-scale MP law of ratio Q (quadrature on x = a + (b-a)(1-cos t)/2)."""
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
    cdf /= cdf[-1]
    return float(np.interp(0.5, cdf, x))


def fit_mp_bulk(eigs: torch.Tensor, Q: float, M: int | None = None) -> MPFit:
    """Fit the MP bulk of ``eigs`` (lambda = sigma^2 of an N x M matrix, Q = N / M >= 1).

    Zero eigenvalues beyond the rank M (a pooled or padded spectrum) should not be passed.
    """
    x = torch.as_tensor(eigs).detach().reshape(-1).to(torch.float64)
    if Q < 1 or not math.isfinite(Q):
        return MPFit.failed(Q, f"aspect ratio Q = {Q} must be >= 1")
    if x.numel() < 4:
        return MPFit.failed(Q, f"fewer than 4 eigenvalues ({x.numel()})")
    if not bool(torch.isfinite(x).all()):
        return MPFit.failed(Q, "non-finite eigenvalues")
    M = int(M if M is not None else x.numel())
    x_sorted = x.sort().values.cpu().numpy()
    median = float(np.median(x_sorted))
    if median <= 0:
        return MPFit.failed(Q, "median eigenvalue is zero (rank-deficient spectrum)")
    s2 = median / mp_median(float(Q))
    csum = np.concatenate([[0.0], np.cumsum(x_sorted)])
    previous = -1
    for _ in range(MAX_ITERATIONS):
        _, plus = mp_edges(s2, Q)
        edge = plus + tracy_widom_margin(plus, s2, Q, M)
        n_bulk = int(np.searchsorted(x_sorted, edge, side="right"))
        if n_bulk == 0:
            return MPFit.failed(Q, "no eigenvalue inside the fitted bulk")
        if n_bulk == previous:
            break
        previous = n_bulk
        s2 = float(csum[n_bulk] / n_bulk)
    minus, plus = mp_edges(s2, Q)
    margin = tracy_widom_margin(plus, s2, Q, M)
    n_bulk = int(np.searchsorted(x_sorted, plus + margin, side="right"))
    return MPFit(s2, float(Q), plus, minus, margin, n_bulk, int(x_sorted.size - n_bulk))
