"""Correlation traps and the distance of an ESD from its randomised twin (Martin & Mahoney;
docs/methods.md#correlation-traps).

Shuffling the entries of W destroys every correlation, so the shuffled matrix's ESD should be a
pure Marchenko-Pastur bulk. Eigenvalues of the shuffled matrix above its MP edge (plus the
Tracy-Widom margin) are *traps*: a few large entries carrying correlation-like structure, a mark
of over-fitting or a bad learning rate.

The mean is subtracted before shuffling (:func:`trap_matrix`): a shuffled matrix of mean mu keeps
the rank-one spike mu * 1 1^T, whose eigenvalue ~ N M mu^2 (unit-scale Gram) clears the MP edge
for any mean/std above ~ (N M)^(-1/4) (0.2 already does on 64 x 288) and says nothing about
correlations. ``ww_compat=True`` keeps WeightWatcher 0.7.7's uncentred shuffle.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from svd_callback.rmt.mp import fit_mp_bulk

HISTOGRAM_BINS = 100


def shuffle_matrix(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of all entries of ``weight`` drawn from ``generator`` (never the
    global RNG). The generator must live on the weight's device."""
    perm = torch.randperm(weight.numel(), generator=generator, device=weight.device)
    return weight.reshape(-1)[perm].reshape(weight.shape)


def trap_matrix(
    weight: torch.Tensor, generator: torch.Generator, *, ww_compat: bool = False
) -> torch.Tensor:
    """The matrix whose ESD is searched for traps: ``shuffle_matrix(W - mean(W))``, or the
    uncentred ``shuffle_matrix(W)`` with ``ww_compat`` (WeightWatcher 0.7.7's ``randomize``).

    The mean is taken over all entries (for a conv kernel: over the whole tensor, the same as
    over its unfolded matrix)."""
    if not ww_compat:
        weight = weight - weight.mean()
    return shuffle_matrix(weight, generator)


def js_distance(a: torch.Tensor, b: torch.Tensor, bins: int = HISTOGRAM_BINS) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the histograms of log10 of the
    positive values of ``a`` and ``b`` on one shared grid."""
    la = torch.log10(a[a > 0].double())
    lb = torch.log10(b[b > 0].double())
    if la.numel() == 0 or lb.numel() == 0:
        return math.nan
    lo = float(torch.minimum(la.min(), lb.min()))
    hi = float(torch.maximum(la.max(), lb.max()))
    if hi <= lo:
        return 0.0
    p = torch.histc(la, bins=bins, min=lo, max=hi)
    q = torch.histc(lb, bins=bins, min=lo, max=hi)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(u: torch.Tensor) -> torch.Tensor:
        mask = u > 0
        return (u[mask] * torch.log2(u[mask] / m[mask])).sum()

    divergence = float((kl(p) + kl(q)) / 2)
    return math.sqrt(max(divergence, 0.0))


def js_distance_ww(evals: np.ndarray, rand_evals: np.ndarray) -> float:
    """WeightWatcher 0.7.7's ``RMT_Util.jensen_shannon_distance`` on the two *sorted eigenvalue
    vectors* treated as probability vectors (natural log; needs equal lengths)."""
    from scipy import stats

    p, q = np.sort(np.asarray(evals, float)), np.sort(np.asarray(rand_evals, float))
    if p.shape != q.shape or p.size == 0:
        return math.nan
    m = (p + q) / 2
    return float(np.sqrt((stats.entropy(p, m) + stats.entropy(q, m)) / 2))


def trap_metrics(eigs: torch.Tensor, shuffled_eigs: torch.Tensor, N: int, M: int) -> dict:
    """``num_traps``, ``trap_max`` (largest shuffled eigenvalue / the shuffled bulk's lambda_plus),
    ``shuffled_eigs`` being the ESD of :func:`trap_matrix`'s output,
    ``rand_distance`` (JS distance of log-ESD histograms) and ``rand_distance_ww``
    (WeightWatcher's definition); NaN where undefined."""
    eigs = torch.as_tensor(eigs).double().reshape(-1)
    shuffled = torch.as_tensor(shuffled_eigs).double().reshape(-1)
    out = {"num_traps": math.nan, "trap_max": math.nan, "rand_distance": math.nan,
           "rand_distance_ww": math.nan}
    if not (torch.isfinite(eigs).all() and torch.isfinite(shuffled).all()):
        return out
    fit = fit_mp_bulk(shuffled[shuffled > 0], N / M, M)
    if fit.reason is None:
        out["num_traps"] = float(fit.num_spikes)
        out["trap_max"] = float(shuffled.max()) / fit.lambda_plus
    out["rand_distance"] = js_distance(eigs, shuffled)
    out["rand_distance_ww"] = js_distance_ww(eigs.cpu().numpy(), shuffled.cpu().numpy())
    return out
