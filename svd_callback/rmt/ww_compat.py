"""WeightWatcher 0.7.7 arithmetic, replicated operation by operation (numpy, float64).

These functions are the ``ww_compat`` referees: the torch code finds the answer, these
reproduce WeightWatcher's own floating-point evaluation of it, so that compat results are
bit-identical to ``weightwatcher==0.7.7`` on the same eigenvalues. Each function names the
WeightWatcher function it mirrors. They are cheap: O(tail) per candidate, O(N) per layer.

WeightWatcher 0.7.7 conventions reproduced here (CPU build; on a machine with CUDA, WeightWatcher
casts weights to float16, runs the SVD in float32 on the GPU and uses EPSILON = 6e-5 in the
entropy, so its numbers differ from its own CPU numbers):

* ``WeightWatcher.fit_powerlaw``: eigenvalues ``<= EVALS_THRESH = 1e-5`` are dropped, then
  ``WW_powerlaw.pl_fit`` -> ``WWFit`` fits; an exception gives alpha = D = sigma = xmin = -1,
  num_pl_spikes = -1; ``num_pl_spikes = #{evals >= xmin}`` over the unthresholded eigenvalues.
* ``WWFit.fit_power_law_standard`` (N >= 20): for every i < N - 1,
  ``alpha = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])``, ``D = 1`` unless alpha > 1, then
  ``D = max|1 - (data[i:]/xmin)**(-alpha+1) - arange(n)/n|``; ``sigma = (alpha-1)/sqrt(n)``;
  ``WWFit.__init__`` keeps ``np.argmin(Ds)`` (first index on ties).
* ``WWFit.fit_powerlaw_smallN`` (N < 20): bias-corrected ``alpha = 1 + (n-1)/s`` on tails of at
  least 8 points with s > 1e-12; it picks xmin by ``J = D - 0.868/sqrt(n)`` but
  ``WWFit.__init__`` then overrides that choice with ``np.argmin(Ds)`` -- reproduced as is.
* ``WeightWatcher.apply_norm_metrics``: log_norm = log10(sum evals), log_spectral_norm =
  log10(max evals), alpha_weighted = alpha * log_spectral_norm, log_alpha_norm =
  log10(sum(ev**alpha)) over *all* eigenvalues, stable_rank = sum / max, matrix_rank and entropy
  from ``RMT_Util.matrix_rank`` / ``matrix_entropy`` on ``np.sqrt(evals)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EVALS_THRESH = 1e-5
"""WeightWatcher's eigenvalue floor (``constants.EVALS_THRESH``)."""
SMALL_N_CUTOFF = 20
"""``WW_powerlaw.SMALL_N_CUTOFF``: below this many eigenvalues ``WWFit`` uses the small-N fit."""
EPSILON = 1e-10
"""``constants.EPSILON`` used by ``RMT_Util.matrix_entropy`` (CPU build)."""


def candidate_fit(data: np.ndarray, log_data: np.ndarray, i: int) -> tuple[float, float, float]:
    """(alpha, D, sigma) of candidate xmin = data[i]: one iteration of
    ``WWFit.fit_power_law_standard`` plus its ``sigmas`` line."""
    N = len(data)
    xmin = data[i]
    with np.errstate(all="ignore"):
        n = float(N - i)
        alpha = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
        D = np.float64(1.0)
        if alpha > 1:
            D = np.max(np.abs(1 - (data[i:] / xmin) ** (-alpha + 1) - np.arange(n) / n))
        sigma = (alpha - 1) / np.sqrt(np.int64(N - i))
    return float(alpha), float(D), float(sigma)


def small_n_fit(data: np.ndarray, k_min: int = 8) -> tuple[float, float, float, float]:
    """(xmin, alpha, D, sigma) of ``WWFit`` on N < 20 sorted values: ``fit_powerlaw_smallN``
    followed by the ``np.argmin(self.Ds)`` of ``WWFit.__init__``. Raises like WeightWatcher
    (IndexError / ValueError) when N < 2."""
    N = len(data)
    with np.errstate(all="ignore"):
        log_data = np.log(data, dtype=np.float64)
        alphas = np.zeros(N - 1, dtype=np.float64)
        Ds = np.ones(N - 1, dtype=np.float64)
        Js = np.full(N - 1, np.inf, dtype=np.float64)
        for i, xmin in enumerate(data[:-1]):
            n_int = N - i
            if n_int < k_min:
                continue
            n = float(n_int)
            s = np.sum(log_data[i:]) - n * log_data[i]
            if s <= 1e-12:
                continue
            alpha_bc = 1.0 + (n - 1.0) / s
            alphas[i] = alpha_bc
            if alpha_bc <= 1.0:
                continue
            F_fit = 1.0 - (data[i:] / xmin) ** (1.0 - alpha_bc)
            F_emp = np.arange(n_int, dtype=np.float64) / n
            Dks = float(np.max(np.abs(F_emp - F_fit)))
            Ds[i] = Dks
            Js[i] = Dks - 0.868 / np.sqrt(n)
        sigmas = (alphas - 1.0) / np.sqrt(N - np.arange(N - 1))
        if not np.isfinite(Js).any():
            xmin = data[0]
            n = float(N)
            s = np.sum(log_data) - n * log_data[0]
            if s > 1e-12:
                alpha_bc = 1.0 + (n - 1.0) / s
                alphas[0] = alpha_bc
                F_fit = 1.0 - (data / xmin) ** (1.0 - alpha_bc)
                F_emp = np.arange(N, dtype=np.float64) / n
                Ds[0] = float(np.max(np.abs(F_emp - F_fit)))
        i = int(np.argmin(Ds))
        return float(data[:-1][i]), float(alphas[i]), float(Ds[i]), float(sigmas[i])


def matrix_rank(svals: np.ndarray, N: int) -> int:
    """``RMT_Util.matrix_rank``: #{s > max(s) * N * eps(dtype)}."""
    tol = np.max(svals) * N * np.finfo(svals.dtype).eps
    return int(np.count_nonzero(svals > tol))


def matrix_entropy(svals: np.ndarray, N: int) -> float:
    """``RMT_Util.matrix_entropy``: p = s^2 / sum s^2 + 1e-10, -sum p ln p / ln(rank + 1e-10)."""
    with np.errstate(all="ignore"):
        rank = matrix_rank(svals, N)
        evals = svals * svals
        p = evals / np.sum(evals) + EPSILON
        rank += EPSILON
        return float(-np.sum(p * np.log(p)) / np.log(rank))


def norm_metrics(evals: np.ndarray, alpha: float, N: int) -> dict[str, float]:
    """``WeightWatcher.apply_norm_metrics`` on WeightWatcher's sorted eigenvalue array."""
    with np.errstate(all="ignore"):
        evals = np.sort(np.asarray(evals, dtype=np.float64))
        norm = np.sum(evals)
        log_norm = np.log10(norm)
        spectral_norm = np.max(evals)
        log_spectral_norm = np.log10(spectral_norm)
        alpha64 = np.float64(alpha)
        alpha_weighted = alpha64 * log_spectral_norm
        log_alpha_norm = np.log10(np.sum([ev**alpha64 for ev in evals]))
        stable_rank = norm / spectral_norm
        svals = np.sqrt(evals)
        return {
            "log_norm": float(log_norm),
            "log_spectral_norm": float(log_spectral_norm),
            "alpha_weighted": float(alpha_weighted),
            "log_alpha_norm": float(log_alpha_norm),
            "stable_rank": float(stable_rank),
            "matrix_rank": float(matrix_rank(svals, N)),
            "entropy": matrix_entropy(svals, N),
        }



# --- Marchenko-Pastur bulk fit (the ``"mp"`` metric group) ----------------------------------------

MP_KDE_BANDWIDTH = 0.1
"""``WeightWatcher.mp_fit``'s ``bw``: the linear-kernel KDE bandwidth, in units of the rescaled
ESD (mean eigenvalue 1)."""
MP_KDE_POINTS = 1000
"""``RMT_Util.resid_mp`` evaluates the KDE on ``linspace(0, max + 0.5, 1000)``."""
MP_KDE_THRESH = 0.01
"""``resid_mp`` drops KDE points with density <= 0.01 (they add zero residual)."""
MP_PENALTY = 1000.0
"""``resid_mp``'s residual per point for a sigma whose MP edges it rejects."""
_KDE_CHUNK = 1 << 22


@dataclass(frozen=True)
class WWMPFit:
    """``WeightWatcher.mp_fit``'s outputs (0.7.7), under its own names.

    Attributes:
        num_spikes: #{rescaled eigenvalues > bulk_max + sqrt(TW)}.
        sigma_mp: fitted MP sigma of the rescaled ESD (so the MP scale is sigma_mp^2).
        mp_softrank: bulk_max / lambda_max, both rescaled.
        bulk_max, bulk_min: (sigma_mp (1 +- 1/sqrt(Q)))^2 in the layer's own eigenvalue units
            (divided back by W_scale^2, as WeightWatcher returns them).
        W_scale: sqrt(n) / sqrt(sum lambda); the fit runs on W_scale^2 lambda (mean 1).
        tw_margin: sqrt(TW), TW = Q^(-1/2) bulk_max^(2/3) M^(-2/3) (rescaled units).
    """

    num_spikes: int
    sigma_mp: float
    mp_softrank: float
    bulk_max: float
    bulk_min: float
    W_scale: float
    tw_margin: float


def linear_kde(samples: np.ndarray, points: np.ndarray, bandwidth: float) -> np.ndarray:
    """Density of scikit-learn's ``KernelDensity(kernel='linear', bandwidth=h)`` in one
    dimension: (1 / (n h)) sum_i max(0, 1 - |x - x_i| / h) (Silverman 1986, triangular kernel),
    summed exactly (scikit-learn's default ``atol = rtol = 0``)."""
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    points = np.asarray(points, dtype=np.float64).reshape(-1)
    out = np.empty(points.size, dtype=np.float64)
    step = max(1, _KDE_CHUNK // max(1, samples.size))
    for start in range(0, points.size, step):
        u = np.abs(points[start:start + step, None] - samples[None, :]) / bandwidth
        out[start:start + step] = np.clip(1.0 - u, 0.0, None).sum(axis=1)
    return out / (samples.size * bandwidth)


def _mp_density(x: np.ndarray, Q: float, sigma: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``RMT_Util.marchenko_pastur_fun``: (density, a, b) with NaN (outside the bulk) -> 0."""
    y = 1 / Q
    b = np.power(sigma * (1 + np.sqrt(1 / Q)), 2)
    a = np.power(sigma * (1 - np.sqrt(1 / Q)), 2)
    with np.errstate(all="ignore"):
        val = np.nan_to_num((1 / (2 * np.pi * sigma * sigma * x * y)) * np.sqrt((b - x) * (x - a)))
    return val, a, b


def _quarter_circle(x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``RMT_Util.quarter_circle_fun``: (1 / (pi sigma^2)) sqrt(4 - x^2), NaN -> 0."""
    with np.errstate(all="ignore"):
        return np.nan_to_num((1 / (np.pi * sigma * sigma)) * np.sqrt(4 - x**2))


class _MPResidual:
    """``RMT_Util.resid_mp(sigma, to_fit, Q, bw, allresid=False)``. WeightWatcher refits the KDE
    at every sigma; it does not depend on sigma, so it is computed once here."""

    def __init__(self, to_fit: np.ndarray, Q: float, bw: float = MP_KDE_BANDWIDTH) -> None:
        xde = np.linspace(0, np.max(to_fit) + 0.5, MP_KDE_POINTS)
        yde = linear_kde(to_fit, xde, bw)  # WeightWatcher: exp(score_samples), same values
        good = np.where(yde > MP_KDE_THRESH)[0]
        self.xde, self.yde, self.Q = xde[good], yde[good], Q
        self.x_peak = self.xde[np.where(self.yde == max(self.yde))][0] if good.size else np.nan

    def __call__(self, sigma: np.ndarray) -> float:
        if self.Q == 1:
            resid = _quarter_circle(self.xde, sigma) - self.yde
        else:
            ymp, a, b = _mp_density(self.xde, self.Q, sigma)
            if (b < self.x_peak) | (b > max(self.xde)) | (a > self.x_peak):
                resid = np.zeros(len(self.yde)) + MP_PENALTY
            else:
                resid = ymp - self.yde
        return float(np.sum(resid**2))  # the dropped points add zeros


def fit_mp_sigma(evals: np.ndarray, Q: float) -> float:
    """``RMT_Util.fit_density_with_range``: brute-force grid of sigma over
    [0.05, 2) sigma_0 in steps of 0.01 sigma_0, sigma_0 = sqrt(lambda_max) / (1 + Q^(-1/2))
    (``calc_sigma``), then scipy's default ``fmin`` polish (Nelder-Mead, xtol = ftol = 1e-4).
    The KDE is of sqrt(evals) when Q == 1 (quarter-circle law), else of evals."""
    from scipy import optimize

    s0 = np.sqrt(np.max(evals) / np.square(1 + 1.0 / np.sqrt(Q)))
    sigma_range = (slice(0.05 * s0, 2.0 * s0, 0.01 * s0),)
    residual = _MPResidual(np.sqrt(evals) if Q == 1 else evals, Q)
    best = optimize.brute(lambda p: residual(p), sigma_range, full_output=True)
    return float(best[0][0])


def mp_fit(evals: np.ndarray, N: int, M: int) -> WWMPFit:
    """``WeightWatcher.mp_fit`` (rescale=True, the default) on a layer's eigenvalues ``evals``
    (all of them, zeros included; a conv layer's slices pooled), N >= M one matrix's shape:
    rescale to mean 1, fit sigma_mp, bulk_max = (sigma_mp (1 + 1/sqrt(Q)))^2, spikes above
    bulk_max + sqrt(Q^(-1/2) bulk_max^(2/3) M^(-2/3)). Raises where WeightWatcher raises (it
    then reports -1 for every output)."""
    evals = np.asarray(evals, dtype=np.float64)
    Q = N / M
    w_scale = np.sqrt(evals.shape[0]) / np.sqrt(np.sum(evals))
    to_plot = (w_scale * w_scale) * evals
    lambda_max = np.max(to_plot)
    s1 = fit_mp_sigma(to_plot, Q)
    bulk_max = (s1 * (1 + 1 / np.sqrt(Q))) ** 2
    bulk_min = (s1 * (1 - 1 / np.sqrt(Q))) ** 2
    tw = 1 / np.sqrt(Q) * np.power(bulk_max, 2 / 3) * np.power(M, -2 / 3)
    margin = np.sqrt(tw)
    spikes = len(to_plot[to_plot > bulk_max + margin])
    return WWMPFit(int(spikes), s1, float(bulk_max / lambda_max),
                   float(bulk_max / (w_scale * w_scale)), float(bulk_min / (w_scale * w_scale)),
                   float(w_scale), float(margin))
