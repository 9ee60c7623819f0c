"""Power-law fits of the tail of an eigenvalue spectrum (ESD).

``fit_power_law`` is the KS-optimal xmin scan of Clauset, Shalizi & Newman (2009) as used by
Martin & Mahoney (heavy-tailed self-regularisation, JMLR 2021) and WeightWatcher:

    alpha_i = 1 + n_i / sum_{x >= x_i} ln(x / x_i),   sigma_i = (alpha_i - 1) / sqrt(n_i)
    D_i     = max over the tail | F_i(x) - e_i(x) |,  F_i(x) = 1 - (x / x_i)^(1 - alpha_i)

keeping the xmin = x_i of smallest D. Two conventions:

* ``ww_compat=True`` reproduces ``weightwatcher==0.7.7`` (``WeightWatcher.fit_powerlaw`` ->
  ``WW_powerlaw.WWFit``) bit for bit: floor 1e-5, every sorted value but the last is a
  candidate, e = arange(n)/n even on ties, the small-sample branch below 20 values, and its
  failure convention (alpha = D = sigma = xmin = n_tail = -1). The scan finds the candidates
  within 1e-9 of the best D in torch; WeightWatcher's own numpy arithmetic
  (:mod:`svd_callback.rmt.ww_compat`, on the host: O(tail) per candidate) settles among them.
  Deliberate departures, where WeightWatcher returns meaningless numbers rather than an error:
  spectra with fewer than 8 values (WeightWatcher skips such layers), with all values above the
  floor equal (it reports alpha = inf, or 0 below 20 values) and ``top_k_clip`` > N / 2 (it
  then clips at the eigenvalue nearest the number k) fail with -1 and a reason.
* the default follows the ``powerlaw`` package (``powerlaw.Fit``, continuous, KS xmin scan):
  candidates are the distinct values (not the two largest), e(x) is the fraction of the tail
  strictly below x, plus a minimum tail size; failures give NaN and a reason.

The scan is the exact branch-and-bound of :mod:`svd_callback.rmt.ks_scan` (same answer as the
full O(N^2) scan, to the bit). ``hill_alpha`` is TempBalance's estimator (Zhou et al., NeurIPS
2023): the same MLE with xmin fixed at the median eigenvalue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from svd_callback.rmt import ks_scan
from svd_callback.rmt import ww_compat as ww_ref

MIN_EIGS = 8
"""Fewer eigenvalues than this cannot be fitted (WeightWatcher skips layers with M*rf < 8)."""
HILL_MIN_EIGS = 50
"""TempBalance skips layers with fewer eigenvalues than this."""
HILL_FLOOR = 0.0
"""TempBalance keeps every eigenvalue by default (``filter_zeros=False``); only values <= 0,
whose logarithm is undefined, are dropped."""
SELECTION_MARGIN = 1e-9
"""Candidates whose scanned D is within this of the smallest are re-evaluated by the canonical
per-candidate evaluation (float64 torch, or WeightWatcher's own numpy arithmetic in compat
mode), which settles the choice; scan and canonical D differ by ~1e-14 at most."""


@dataclass(frozen=True)
class PowerLawFit:
    """A power-law tail fit.

    Attributes:
        alpha: exponent of rho(lambda) ~ lambda^-alpha (NaN on failure; -1 in compat mode).
        xmin: start of the fitted tail.
        xmax: largest fitted eigenvalue.
        D: KS distance of the fit on the tail.
        sigma: (alpha - 1) / sqrt(n), the MLE's standard error.
        n_tail: eigenvalues >= xmin (WeightWatcher's ``num_pl_spikes`` in compat mode).
        n_eigs: eigenvalues the fit saw (after the floor, clipping and xmax).
        method: ``ks`` (powerlaw-package convention), ``ks-ww`` (WeightWatcher 0.7.7) or ``hill``.
        reason: why the fit failed (None on success).
    """

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    n_tail: float
    n_eigs: int
    method: str
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @staticmethod
    def failed(method: str, reason: str, n_eigs: int = 0, ww: bool = False) -> PowerLawFit:
        """A failed fit: NaN fields, or WeightWatcher's -1 convention when ``ww``."""
        bad = -1.0 if ww else math.nan
        return PowerLawFit(bad, bad, math.nan, bad, bad, bad, n_eigs, method, reason)


def _prepare_eigs(
    eigs: torch.Tensor | np.ndarray | Sequence[float],
) -> tuple[torch.Tensor, str | None]:
    """1-D float64 ascending tensor, or a reason it cannot be fitted."""
    x = torch.as_tensor(eigs)
    if not torch.is_floating_point(x):
        x = x.to(torch.float64)
    x = x.detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        return x, "no eigenvalues"
    if not bool(torch.isfinite(x).all()):
        return x, "non-finite eigenvalues"
    x = x.sort().values
    if x.numel() < MIN_EIGS:
        return x, f"fewer than {MIN_EIGS} eigenvalues ({x.numel()})"
    return x, None


def fit_power_law(
    eigs: torch.Tensor | np.ndarray | Sequence[float],
    *,
    ww_compat: bool = False,
    xmax: float | None = None,
    top_k_clip: int | None = None,
    min_tail: int = 8,
    floor: float | None = None,
    method: str = "ks",
    prune: bool = True,
) -> PowerLawFit:
    """KS-optimal power-law fit of the tail of ``eigs`` (or the Hill fit, ``method="hill"``).

    Args:
        eigs: eigenvalues lambda = sigma^2 (any order; tensor on any device, array or list).
        ww_compat: reproduce WeightWatcher 0.7.7's ``fit_powerlaw`` / ``WWFit`` exactly.
        xmax: fit only eigenvalues <= xmax (compat: up to the value nearest ``xmax``, as
            ``WWFit``'s ``find_limit``).
        top_k_clip: drop the k largest eigenvalues first (WeightWatcher's ``xmax=-k``).
        min_tail: smallest admissible tail (default convention only).
        floor: eigenvalues <= floor are dropped (default 1e-5, WeightWatcher's
            ``EVALS_THRESH``; for ``hill`` 0, TempBalance's default).
        method: ``ks`` (the xmin scan) or ``hill`` (:func:`hill_alpha`).
        prune: use the exact branch-and-bound scan (False: the full O(N^2) scan; same result).

    Returns:
        A :class:`PowerLawFit`; never raises on bad data (NaN or -1 plus a reason instead).
    """
    if method == "hill":
        return hill_alpha(eigs, floor=HILL_FLOOR if floor is None else floor)
    if method != "ks":
        raise ValueError(f"unknown method {method!r}; expected 'ks' or 'hill'")
    name = "ks-ww" if ww_compat else "ks"
    floor = ww_ref.EVALS_THRESH if floor is None else floor
    x, reason = _prepare_eigs(eigs)
    if reason:
        return PowerLawFit.failed(name, reason, int(x.numel()), ww_compat)
    if top_k_clip:
        k = int(top_k_clip)
        if (ww_compat and k > x.numel() / 2) or k >= x.numel():
            return PowerLawFit.failed(name, f"top_k_clip={k} leaves too few eigenvalues",
                                      int(x.numel()), ww_compat)
        x = x[:-k]
    all_eigs = x
    x = x[x > floor]
    if xmax is not None and x.numel():
        x = x[: int(torch.argmin((x - xmax).abs())) + 1] if ww_compat else x[x <= xmax]
    N = int(x.numel())
    if N < 2:
        return PowerLawFit.failed(name, f"fewer than 2 eigenvalues above the floor {floor:g}",
                                  N, ww_compat)
    if bool(x[0] == x[-1]):
        return PowerLawFit.failed(name, "all eigenvalues above the floor are equal", N, ww_compat)
    if ww_compat:
        return _fit_ww(x, all_eigs, prune)
    return _fit_powerlaw_convention(x, min_tail, prune)


def _fit_ww(x: torch.Tensor, all_eigs: torch.Tensor, prune: bool) -> PowerLawFit:
    """``WWFit`` on the floored data ``x``; the scan picks the near-best candidates and
    WeightWatcher's own numpy arithmetic (:func:`ww_compat.candidate_fit`) decides among them."""
    N = int(x.numel())
    data = x.cpu().numpy()
    if N < ww_ref.SMALL_N_CUTOFF:
        xmin, alpha, D, sigma = ww_ref.small_n_fit(data)
    else:
        L = x.log()
        d = ks_scan.tail_log_sums(L)
        candidates = torch.arange(N - 1, device=x.device)
        r = torch.arange(N, device=x.device, dtype=torch.float64)
        scan = ks_scan.prepare(L, r, candidates, d)
        rows, _ = ks_scan.near_best(scan, SELECTION_MARGIN, prune, _uncertain(L, d, N))
        log_data = np.log(data, dtype=np.float64)
        best = None
        for i in sorted(rows.tolist()):
            alpha_i, D_i, sigma_i = ww_ref.candidate_fit(data, log_data, i)
            if best is None or D_i < best[2]:  # np.argmin: first index of the minimum
                best = (i, alpha_i, D_i, sigma_i)
        i, alpha, D, sigma = best
        xmin = float(data[i])
    n_tail = float((all_eigs >= xmin).sum())
    return PowerLawFit(alpha, xmin, float(data[-1]), D, sigma, n_tail, N, "ks-ww")


def _uncertain(L: torch.Tensor, d: torch.Tensor, N: int) -> torch.Tensor:
    """Candidates whose WeightWatcher alpha may differ from ours by more than rounding.

    WeightWatcher computes d_i as ``np.sum(L[i:]) - n L[i]``, whose rounding error is at most
    ~(log2 n + 8) eps (sum |L_j| + n |L_i|); where that exceeds 1e-11 d_i (near-equal tails) its
    alpha, hence its D, may be far from ours, so those candidates are always re-evaluated.
    """
    n = torch.arange(N, 0, -1, device=L.device, dtype=L.dtype)
    abs_suffix = L.abs().flip(0).cumsum(0).flip(0)
    err = (n.log2() + 8) * torch.finfo(L.dtype).eps * (abs_suffix + n * L.abs())
    return (err > 1e-11 * d)[:-1]


def _fit_powerlaw_convention(x: torch.Tensor, min_tail: int, prune: bool) -> PowerLawFit:
    """The ``powerlaw`` package's continuous xmin scan, with a minimum tail size."""
    N = int(x.numel())
    device = x.device
    positions = torch.arange(N, device=device)
    starts = torch.ones(N, dtype=torch.bool, device=device)
    starts[1:] = x[1:] != x[:-1]
    r = torch.where(starts, positions, 0).cummax(0).values.to(torch.float64)
    unique_starts = positions[starts]
    # powerlaw.Fit.find_xmin: distinct values < max(data), then drops the last one
    admissible = unique_starts[:-2] if unique_starts.numel() > 2 else unique_starts[:0]
    candidates = admissible[(N - admissible) >= max(int(min_tail), 2)]
    if candidates.numel() == 0:
        return PowerLawFit.failed("ks", f"no xmin leaves a tail of {min_tail} eigenvalues "
                                  f"with 3 distinct values ({N} above the floor)", N)
    L = x.log()
    d = ks_scan.tail_log_sums(L)
    scan = ks_scan.prepare(L, r, candidates, d)
    rows, _ = ks_scan.near_best(scan, SELECTION_MARGIN, prune)
    best = None
    for pos in sorted(rows.tolist()):
        D = _canonical_D(scan, pos)
        if best is None or best[1] > D:
            best = (pos, D)
    pos, D = best
    i = int(candidates[pos])
    n = N - i
    alpha = 1.0 + n / float(d[i])
    return PowerLawFit(alpha, float(x[i]), float(x[-1]), D, (alpha - 1.0) / math.sqrt(n),
                       float(n), N, "ks")


def _canonical_D(scan: ks_scan.ScanInput, pos: int) -> float:
    """Exact float64 D of one candidate, evaluated alone (so the same bits whichever scan found
    it): D = max_j |(1 - e_j) - exp(c (L_j - L_i))| over the tail."""
    i = int(scan.candidates[pos])
    n = scan.n - i
    tail = scan.L[i:]
    fm = torch.exp(scan.c[pos] * (tail - scan.L[i]))
    e = (scan.r[i:] - i) / n
    return float(((1.0 - e) - fm).abs().max())


def hill_alpha(
    eigs: torch.Tensor | np.ndarray | Sequence[float],
    *,
    floor: float = HILL_FLOOR,
    min_eigs: int = HILL_MIN_EIGS,
) -> PowerLawFit:
    """Hill estimator with xmin = the median eigenvalue (TempBalance, Zhou et al. 2023,
    ``net_esd_estimator(fix_fingers='xmin_mid')``): on the sorted eigenvalues above ``floor``,
    i = N // 2, xmin = x_i, alpha = 1 + n / sum_{j >= i} ln(x_j / x_i), n = N - i, with
    TempBalance's D = max |1 - (x/xmin)^(1-alpha) - arange(n)/n|. NaN and a reason when fewer
    than ``min_eigs`` eigenvalues lie above the floor (TempBalance skips such layers)."""
    x, reason = _prepare_eigs(eigs)
    if reason:
        return PowerLawFit.failed("hill", reason, int(x.numel()))
    x = x[x > floor]
    N = int(x.numel())
    if min_eigs > N:
        return PowerLawFit.failed("hill", f"fewer than {min_eigs} eigenvalues above the floor "
                                  f"{floor:g} ({N})", N)
    i = N // 2
    n = N - i
    L = x[i:].log()
    d = ks_scan.tail_log_sums(L)[0]
    if not bool(d > 0):
        return PowerLawFit.failed("hill", "upper half of the spectrum is constant", N)
    alpha = 1.0 + n / float(d)
    fm = torch.exp((1.0 - alpha) * (L - L[0]))
    e = torch.arange(n, device=x.device, dtype=torch.float64) / n
    D = float(((1.0 - e) - fm).abs().max())
    return PowerLawFit(alpha, float(x[i]), float(x[-1]), D, (alpha - 1.0) / math.sqrt(n),
                       float(n), N, "hill")


def fit_power_law_many(
    eigs_list: Sequence[torch.Tensor | np.ndarray | Sequence[float]], **kwargs
) -> list[PowerLawFit]:
    """:func:`fit_power_law` on each spectrum of ``eigs_list`` (same keyword arguments)."""
    return [fit_power_law(eigs, **kwargs) for eigs in eigs_list]
