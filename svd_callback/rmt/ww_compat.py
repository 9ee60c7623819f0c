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

