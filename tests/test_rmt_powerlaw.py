"""Power-law tail fits against the ``powerlaw`` package, a brute-force oracle written from the
definition, TempBalance's Hill formula, and the pruned scan against the full scan."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from svd_callback.rmt import PowerLawFit, fit_power_law, fit_power_law_many, hill_alpha, ks_scan

powerlaw = pytest.importorskip("powerlaw")


def pareto(alpha: float, n: int, seed: int) -> np.ndarray:
    """n samples of density ~ x^-alpha on [1, inf) (inverse CDF)."""
    u = np.random.default_rng(seed).random(n)
    return (1.0 - u) ** (-1.0 / (alpha - 1.0))


def brute_force(x: np.ndarray, min_tail: int) -> tuple[float, float, float]:
    """(xmin, alpha, D) of the ``powerlaw``-package convention, straight from the definition:
    candidates are the distinct values but the two largest with a tail of >= min_tail points;
    e(x) is the fraction of the tail strictly below x."""
    x = np.sort(x[x > 1e-5])
    best = (math.nan, math.nan, math.inf)
    for xmin in np.unique(x)[:-2]:
        tail = x[x >= xmin]
        n = tail.size
        if n < min_tail:
            continue
        alpha = 1 + n / np.sum(np.log(tail / xmin))
        values = np.unique(tail)
        below = np.searchsorted(tail, values, side="left") / n
        distance = np.max(np.abs(below - (1 - (values / xmin) ** (1 - alpha))))
        if distance < best[2]:
            best = (xmin, alpha, distance)
    return best


@pytest.mark.parametrize("alpha, seed", [(2.5, 0), (2.5, 1), (3.5, 0), (3.5, 1)])
def test_matches_the_powerlaw_package(alpha, seed):
    """powerlaw 2.x uses the closed-form MLE only for alpha in (1.5, 3] (numerical, bounded fits
    elsewhere), so alpha = 3.5 samples are compared through y = x^k, k = 2: the KS scan is
    invariant under this map (same xmin index and D; alpha_y - 1 = (alpha_x - 1) / k)."""
    x = pareto(alpha, 2000, seed)
    k = 1.0 if alpha <= 3 else 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = powerlaw.Fit(x**k, verbose=False)
    ours = fit_power_law(torch.from_numpy(x), min_tail=3)
    assert ours.reason is None and ours.method == "ks"
    xs = np.sort(x)
    assert np.searchsorted(xs, ours.xmin) == np.searchsorted(np.sort(x**k), theirs.xmin)
    assert math.isclose(ours.alpha, 1 + k * (theirs.alpha - 1), rel_tol=1e-9)
    assert math.isclose(ours.D, theirs.D, rel_tol=1e-7, abs_tol=1e-12)
    assert abs(ours.alpha - alpha) < 4 * ours.sigma  # the true exponent is recovered
    assert math.isclose(ours.sigma, (ours.alpha - 1) / math.sqrt(ours.n_tail))


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_brute_force_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.pareto(1.5 + seed, 150) + 1, 1 + seed % 2)  # many ties
    xmin, alpha, D = brute_force(x, min_tail=8)
    ours = fit_power_law(x)
    assert ours.xmin == xmin
    assert math.isclose(ours.alpha, alpha, rel_tol=1e-12)
    assert math.isclose(ours.D, D, rel_tol=1e-12, abs_tol=1e-15)
    assert ours.n_tail == np.sum(x >= xmin)


def realistic_spectra() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    slices = torch.randn(9, 256, 128, generator=g, dtype=torch.float64) / 16
    t = torch.distributions.StudentT(torch.tensor(2.5, dtype=torch.float64))
    heavy = t.sample((3, 400, 300)) / 20
    spike = torch.randn(500, 250, generator=g, dtype=torch.float64) / math.sqrt(500)
    spike[0, 0] = 5.0
    return {
        "mp-slices": (torch.linalg.svdvals(slices) ** 2).flatten(),
        "heavy": (torch.linalg.svdvals(heavy) ** 2).flatten(),
        "spiked": torch.linalg.svdvals(spike) ** 2,
        "pareto-3000": torch.from_numpy(pareto(2.2, 3000, 7)),
    }


@pytest.fixture(scope="module")
def spectra():
    torch.manual_seed(0)
    return realistic_spectra()


@pytest.mark.parametrize("name", ["mp-slices", "heavy", "spiked", "pareto-3000"])
@pytest.mark.parametrize("ww", [False, True])
def test_pruned_scan_equals_full_scan_on_realistic_spectra(spectra, name, ww):
    eigs = spectra[name]
    pruned = fit_power_law(eigs, ww_compat=ww)
    assert pruned.reason is None
    assert pruned == fit_power_law(eigs, ww_compat=ww, prune=False)


def _scan_of(x: np.ndarray) -> ks_scan.ScanInput:
    L = torch.from_numpy(np.log(np.sort(x)))
    N = L.numel()
    return ks_scan.prepare(L, torch.arange(N, dtype=torch.float64), torch.arange(N - 1),
                           ks_scan.tail_log_sums(L))


@pytest.mark.parametrize("name", ["mp-slices", "heavy", "pareto-3000"])
def test_float32_bounds_stay_within_their_error_margin(spectra, name):
    """The pruning is exact only if float32 evaluations are within F32_MARGIN of float64."""
    scan = _scan_of(spectra[name].numpy())
    rows = torch.arange(scan.candidates.numel())
    exact = ks_scan.max_gaps(scan, rows, 1, torch.float64)
    assert float((ks_scan.max_gaps(scan, rows, 1, torch.float32) - exact).abs().max()) < (
        ks_scan.F32_MARGIN / 4)
    for points in (32, 256):  # grids are subsets of the tail: lower bounds
        spread = ks_scan.spread_gaps(scan, rows, points, torch.float32)
        assert bool((spread <= exact + ks_scan.F32_MARGIN / 4).all())
    assert torch.equal(ks_scan.full_scan(scan), exact)


finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
pool = st.sampled_from([0.0, 1e-6, 0.5, 1.0, 1.0, 2.0, 3.5, 100.0])
special = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0])


def same(a: PowerLawFit, b: PowerLawFit) -> bool:
    """Field-by-field equality, NaN equal to NaN."""
    return all(x == y or (x != x and y != y) for x, y in zip(vars(a).values(), vars(b).values(),
                                                             strict=True))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(finite, pool, special), min_size=0, max_size=200), st.booleans())
def test_fit_never_raises(data, ww):
    fit = fit_power_law(torch.tensor(data, dtype=torch.float64), ww_compat=ww)
    assert isinstance(fit, PowerLawFit)
    for field in ("alpha", "xmin", "D", "sigma", "n_tail"):
        assert isinstance(getattr(fit, field), float)
    if fit.reason is None:
        assert math.isfinite(fit.D) and fit.n_eigs >= 2
    elif ww:
        assert fit.alpha == -1.0
    else:
        assert math.isnan(fit.alpha)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(finite, pool, finite), min_size=0, max_size=200), st.booleans())
def test_pruned_scan_equals_full_scan_bit_for_bit(data, ww):
    eigs = torch.tensor(data, dtype=torch.float64)
    assert same(fit_power_law(eigs, ww_compat=ww), fit_power_law(eigs, ww_compat=ww, prune=False))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=1.0, max_value=1e4), min_size=20, max_size=120),
       st.integers(3, 12))
def test_fit_equals_brute_force_on_arbitrary_data(data, min_tail):
    x = np.array(data)
    xmin, alpha, D = brute_force(x, min_tail)
    ours = fit_power_law(x, min_tail=min_tail)
    if math.isnan(xmin):
        assert ours.reason is not None
        return
    assert math.isclose(ours.D, D, rel_tol=1e-9, abs_tol=1e-12)
    if ours.xmin != xmin:  # a tie in D within rounding: both are minimisers
        assert math.isclose(ours.D, D, rel_tol=1e-12, abs_tol=1e-15)
    else:
        assert math.isclose(ours.alpha, alpha, rel_tol=1e-9)


@pytest.mark.parametrize("eigs, why", [
    ([], "no eigenvalues"),
    ([1.0, float("nan")] * 10, "non-finite"),
    ([1.0, float("inf")] * 10, "non-finite"),
    ([3.0, 2.0, 1.0], "fewer than 8"),
    ([2.0] * 30, "equal"),
    ([5.0] + [0.0] * 30, "fewer than 2 eigenvalues above the floor"),
    ([1e-7] * 30, "fewer than 2 eigenvalues above the floor"),
])
@pytest.mark.parametrize("ww", [False, True])
def test_degenerate_spectra_fail_with_a_reason(eigs, why, ww):
    fit = fit_power_law(torch.tensor(eigs, dtype=torch.float64), ww_compat=ww)
    assert why in fit.reason
    assert (fit.alpha == -1.0) if ww else math.isnan(fit.alpha)
    assert not fit.ok


def test_too_short_tails_fail_outside_compat():
    fit = fit_power_law(np.arange(1.0, 10.0), min_tail=20)
    assert math.isnan(fit.alpha) and "tail of 20" in fit.reason


def tempbalance_hill(x: np.ndarray) -> tuple[float, float, float]:
    """TempBalance ``net_esd_estimator(fix_fingers='xmin_mid')`` on sorted eigenvalues."""
    x = np.sort(x)
    N = x.size
    i = int(N / 2)
    n = float(N - i)
    log = np.log(x)
    alpha = 1 + n / (np.sum(log[i:]) - n * log[i])
    D = np.max(np.abs(1 - (x[i:] / x[i]) ** (-alpha + 1) - np.arange(n) / n))
    return x[i], alpha, D


@pytest.mark.parametrize("n", [50, 301, 2000])
def test_hill_matches_tempbalance(n):
    x = pareto(2.8, n, n)
    xmin, alpha, D = tempbalance_hill(x)
    ours = hill_alpha(torch.from_numpy(x))
    assert ours.method == "hill" and ours.xmin == xmin
    assert math.isclose(ours.alpha, alpha, rel_tol=1e-10)
    assert math.isclose(ours.D, D, rel_tol=1e-9)
    assert ours == fit_power_law(x, method="hill")
    assert ours.n_tail == n - n // 2


def test_hill_needs_fifty_eigenvalues():
    fit = hill_alpha(pareto(2.5, 49, 0))
    assert math.isnan(fit.alpha) and "fewer than 50" in fit.reason


def test_clipping_options():
    x = pareto(2.5, 400, 3)
    top = np.sort(x)[-5]
    assert fit_power_law(x, top_k_clip=4) == fit_power_law(np.sort(x)[:-4])
    clipped = fit_power_law(x, xmax=top)
    assert clipped.xmax == top and clipped == fit_power_law(x[x <= top])


def test_inputs_and_batches():
    x = pareto(2.5, 300, 4)
    fits = fit_power_law_many([x, torch.from_numpy(x).float(), list(x[:100])], ww_compat=True)
    assert fits[0] == fit_power_law(torch.from_numpy(x), ww_compat=True)
    assert fits[1] == fit_power_law(torch.from_numpy(x).float().double(), ww_compat=True)
    assert fits[2] == fit_power_law(x[:100], ww_compat=True)
    with pytest.raises(ValueError, match="unknown method"):
        fit_power_law(x, method="mle")
