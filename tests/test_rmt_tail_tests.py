"""svd_callback.rmt.tail_tests against the ``powerlaw`` package (an independent implementation
of Clauset et al.'s tests), closed forms and known spectra."""

from __future__ import annotations

import math
import warnings

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from svd_callback.rmt.mp import fit_mp_bulk
from svd_callback.rmt.tail_tests import (
    _log_truncated_normaliser,
    compare_tail,
    nested_test,
    tail_verdict,
    vuong_test,
)

powerlaw = pytest.importorskip("powerlaw")


def _power_law_sample(rng, n, alpha, xmin=1.0):
    return xmin * (1.0 - rng.random(n)) ** (-1.0 / (alpha - 1.0))


def _reference(x, xmin):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(x, xmin=xmin, verbose=False, parameter_ranges={"alpha": [1.0, 10.0]})
        return fit, {alt: fit.distribution_compare("power_law", alt)
                     for alt in ("exponential", "lognormal", "truncated_power_law")}


@pytest.mark.parametrize("kind", ["power law", "log-normal", "cut-off"])
def test_ratios_match_the_powerlaw_package(kind):
    rng = np.random.default_rng(3)
    if kind == "power law":
        x = _power_law_sample(rng, 400, 2.5)
    elif kind == "log-normal":
        x = rng.lognormal(0.5, 1.0, 500)
    else:
        x = _power_law_sample(rng, 3000, 1.8)
        x = x[rng.random(x.size) < np.exp(-0.05 * x)]
    xmin = float(np.quantile(x, 0.3))
    mine = compare_tail(x, xmin)
    fit, reference = _reference(x, xmin)
    assert mine.n_tail == int((x >= xmin).sum())
    assert mine.alpha == pytest.approx(fit.power_law.alpha, rel=1e-12)
    for alternative in ("exponential", "lognormal"):
        ratio, p = reference[alternative]
        got = mine.comparisons[alternative].R
        assert got == pytest.approx(ratio, rel=1e-4, abs=1e-4)
        assert mine.comparisons[alternative].p == pytest.approx(p, rel=1e-3, abs=1e-6)
    # the truncated power law is fitted numerically by both: ours is at least as likely, and
    # equal where the package's optimiser converges
    ratio, p = reference["truncated_power_law"]
    ours = mine.comparisons["truncated_power_law"]
    got = ours.R
    assert ours.nested and got <= ratio + 1e-6
    if kind != "log-normal":
        assert got == pytest.approx(ratio, abs=1e-3)


def test_truncated_normaliser_matches_the_incomplete_gamma_closed_form():
    # C = lam^(alpha - 1) Gamma(1 - alpha, lam xmin), mpmath's upper incomplete gamma
    for alpha, lam, xmin in [(2.5, 0.01, 1.0), (0.5, 1e-4, 2.0), (0.2, 1e-9, 1.0),
                             (5.0, 3.0, 0.5), (1.0, 0.3, 1.0), (-1.0, 2.0, 0.1), (30.0, 1e-6, 3.0)]:
        exact = float(mpmath.log(mpmath.mpf(lam) ** (alpha - 1)
                                 * mpmath.gammainc(1 - alpha, lam * xmin)))
        assert _log_truncated_normaliser(alpha, lam, xmin) == pytest.approx(exact, abs=1e-9)
    # lam = 0 is the power law: C = xmin^(1 - alpha) / (alpha - 1)
    assert _log_truncated_normaliser(2.0, 0.0, 4.0) == pytest.approx(-math.log(4.0))


def test_vuong_and_nested_statistics_by_hand():
    first, second = np.array([1.0, 0.5, 3.0]), np.array([0.0, 1.5, 1.0])  # d = 1, -1, 2
    ratio, p, normalized = vuong_test(first, second)
    variance = ((1 - 2 / 3) ** 2 + (-1 - 2 / 3) ** 2 + (2 - 2 / 3) ** 2) / 3
    assert ratio == pytest.approx(2.0)
    assert normalized == pytest.approx(2.0 / math.sqrt(3 * variance))
    assert p == pytest.approx(special.erfc(2.0 / math.sqrt(2 * 3 * variance)))
    ratio, p = nested_test(np.zeros(4), np.full(4, 0.5))  # R = -2: P(chi2_1 > 4) = 0.0455
    assert ratio == -2.0 and p == pytest.approx(0.04550026389635842)
    assert vuong_test(first, first)[1] == 1.0


def _spectrum(matrix):
    return torch.linalg.svdvals(matrix) ** 2


def _beyond_bulk(eigs, shape):
    fit = fit_mp_bulk(eigs, shape[0] / shape[1], shape[1])
    outliers = eigs[eigs > fit.lambda_plus + fit.tw_margin]
    return compare_tail(outliers, float(outliers.min())) if outliers.numel() else None


def test_spikes_on_a_bulk_pass_the_full_test_but_not_the_beyond_bulk_one():
    generator = torch.Generator().manual_seed(0)
    bulk = torch.randn(784, 512, generator=generator, dtype=torch.float64) / 28
    u = torch.randn(784, 5, generator=generator, dtype=torch.float64)
    v = torch.randn(512, 5, generator=generator, dtype=torch.float64)
    spiked = _spectrum(bulk + u @ v.T / 60)
    assert compare_tail(spiked).verdict() == "power law"  # five outliers fool the full test
    beyond = _beyond_bulk(spiked, (784, 512))
    assert beyond.n_tail == 5 and beyond.verdict() == "undecided" and beyond.reason
    assert compare_tail(_spectrum(bulk)).verdict() != "power law"  # pure MP

    torch.manual_seed(0)
    heavy = _spectrum(torch.distributions.StudentT(1.5).sample((784, 512)).double() / 28)
    assert compare_tail(heavy).verdict() == "power law"
    beyond = _beyond_bulk(heavy, (784, 512))
    assert beyond.n_tail > 100 and beyond.verdict() == "power law"


def test_clear_cases_and_bad_input():
    rng = np.random.default_rng(1)
    assert compare_tail(_power_law_sample(rng, 2000, 2.2)).verdict() == "power law"
    light = compare_tail(1.0 + rng.exponential(1.0, 2000), 1.0)
    assert light.verdict() in ("exponential", "log-normal")
    assert light.comparisons["exponential"].R < 0
    short = compare_tail([1.0, 2.0, 3.0, 50.0], 1.0)
    assert short.reason and short.verdict() == "undecided" and not short.comparisons
    assert compare_tail([1.0, math.nan, 2.0] * 5).reason  # the fit names the problem
    assert compare_tail(np.ones(20), 1.0).reason == "every tail value equals xmin"
    with pytest.raises(ValueError, match="unknown alternatives"):
        compare_tail([1.0, 2.0], 1.0, alternatives=("gamma",))


def test_verdict_rules():
    from svd_callback.rmt.tail_tests import LikelihoodRatio, TailTests

    def tests(exp, logn, trunc):
        return TailTests(1.0, 2.0, 50, {
            "exponential": LikelihoodRatio("exponential", *exp, math.nan, False, ()),
            "lognormal": LikelihoodRatio("lognormal", *logn, math.nan, False, ()),
            "truncated_power_law": LikelihoodRatio("truncated_power_law", *trunc, math.nan,
                                                   True, ())})

    assert tail_verdict(tests((5, 0.01), (-1, 0.5), (-0.5, 0.3))) == "power law"
    assert tail_verdict(tests((5, 0.5), (-1, 0.5), (-0.5, 0.3))) == "undecided"
    assert tail_verdict(tests((5, 0.01), (-4, 0.05), (-3, 0.01))) == "log-normal"  # best wins
    assert tail_verdict(tests((5, 0.01), (-1, 0.5), (-3, 0.01))) == "truncated"
    assert tail_verdict(tests((-5, 0.01), (-1, 0.5), (-6, 0.001))) == "exponential"
    assert tail_verdict(tests((1, 0.5), (-1, 0.5), (-3, 0.01))) == "undecided"


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.floats(1.3, 4.0), st.integers(30, 200))
def test_the_nesting_model_is_never_worse_and_p_is_a_probability(seed, alpha, n):
    x = _power_law_sample(np.random.default_rng(seed), n, alpha)
    result = compare_tail(x, float(np.quantile(x, 0.2)))
    assert result.comparisons["truncated_power_law"].R <= 0.0
    for comparison in result.comparisons.values():
        assert 0.0 <= comparison.p <= 1.0 and math.isfinite(comparison.R)
