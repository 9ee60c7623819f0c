"""Is a spectrum's tail a power law? Likelihood-ratio tests against its alternatives.

Clauset, Shalizi & Newman, "Power-law distributions in empirical data", SIAM Review 51 (2009),
section 5 and appendix C. On the tail x >= xmin (n values; xmin from the power-law fit), each
candidate is fitted by maximum likelihood and compared with the power law through the pointwise
log-likelihoods l_i:

- power law: p(x) = (alpha - 1) / xmin (x / xmin)^-alpha, alpha = 1 + n / sum ln(x_i / xmin);
- exponential: p(x) = lam exp(-lam (x - xmin)), lam = 1 / (mean(x) - xmin);
- log-normal truncated to x >= xmin: p(x) = phi((ln x - mu) / s) / (x s Q((ln xmin - mu) / s)),
  Q the standard normal survival function (mu, s numerically);
- truncated power law (power law with exponential cut-off): p(x) = x^-alpha exp(-lam x) / C,
  C = int_xmin^inf t^-alpha exp(-lam t) dt = xmin^(1-alpha) E_alpha(lam xmin), E the generalised
  exponential integral (alpha, lam >= 0 numerically; lam = 0 is the power law).

R = sum_i (l_i(power law) - l_i(alternative)): R > 0 favours the power law. Non-nested
alternatives (exponential, log-normal): Vuong's test, p = erfc(|R| / sqrt(2 n sigma^2)) with
sigma^2 the variance of the pointwise differences (Clauset et al. eq. C.6). The truncated power
law nests the power law: p = P(chi^2_1 > 2 |R|) (Clauset et al., appendix C; conservative when
the cut-off sits at its boundary lam = 0). A small p says the sign of R is not chance.

:func:`tail_verdict` reads the three tests at a level (0.1 in Clauset et al.): ``"power law"``
only when the power law beats the exponential and no alternative beats it; otherwise the best
alternative that does, or ``"undecided"`` when the tail is too short to tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import integrate, optimize, special, stats

__all__ = [
    "ALTERNATIVES",
    "LikelihoodRatio",
    "TailTests",
    "compare_tail",
    "exponential_loglikelihoods",
    "lognormal_loglikelihoods",
    "power_law_loglikelihoods",
    "tail_verdict",
    "truncated_power_law_loglikelihoods",
    "vuong_test",
]

ALTERNATIVES = ("exponential", "lognormal", "truncated_power_law")
VERDICTS = ("power law", "truncated", "log-normal", "exponential", "undecided")
MIN_TAIL = 8
"""Fewer tail values than this are not tested (the fit already fails below 8 values)."""


@dataclass(frozen=True)
class LikelihoodRatio:
    """The power law against one alternative on the same tail.

    Attributes:
        alternative: ``"exponential"``, ``"lognormal"`` or ``"truncated_power_law"``.
        R: sum of the pointwise log-likelihood ratios, power law minus alternative.
        p: significance of the sign of R.
        normalized_R: Vuong's statistic R / sqrt(n sigma^2) (NaN for the nested test).
        nested: the alternative nests the power law (chi^2 test).
        parameters: the alternative's fitted parameters (``lam``; ``mu, sigma``; ``alpha, lam``).
    """

    alternative: str
    R: float
    p: float
    normalized_R: float
    nested: bool
    parameters: tuple[float, ...]


@dataclass(frozen=True)
class TailTests:
    """The likelihood-ratio tests of one spectrum's tail.

    Attributes:
        xmin: start of the tail; alpha: the power law's MLE on it; n_tail: values >= xmin.
        comparisons: alternative -> :class:`LikelihoodRatio`.
        reason: why nothing was tested (None otherwise).
    """

    xmin: float
    alpha: float
    n_tail: int
    comparisons: dict[str, LikelihoodRatio] = field(default_factory=dict)
    reason: str | None = None

    def verdict(self, level: float = 0.1) -> str:
        return tail_verdict(self, level)


# ---------------------------------------------------------------------- log-likelihoods
def power_law_loglikelihoods(x: np.ndarray, alpha: float, xmin: float) -> np.ndarray:
    """ln p(x_i) of the continuous power law on x >= xmin."""
    return math.log(alpha - 1.0) - math.log(xmin) - alpha * np.log(x / xmin)


def exponential_loglikelihoods(x: np.ndarray, lam: float, xmin: float) -> np.ndarray:
    """ln p(x_i) of the exponential shifted to start at xmin."""
    return math.log(lam) - lam * (x - xmin)


def lognormal_loglikelihoods(x: np.ndarray, mu: float, sigma: float, xmin: float) -> np.ndarray:
    """ln p(x_i) of the log-normal conditioned on x >= xmin (``log_ndtr`` keeps the
    normalisation finite far in the tail)."""
    z = (np.log(x) - mu) / sigma
    log_tail_mass = special.log_ndtr(-(math.log(xmin) - mu) / sigma)
    return -np.log(x) - math.log(sigma) - 0.5 * math.log(2 * math.pi) - 0.5 * z * z - log_tail_mass


def _log_truncated_normaliser(alpha: float, lam: float, xmin: float) -> float:
    """ln C, C = int_xmin^inf t^-alpha e^(-lam t) dt = xmin^(1-alpha) e^-z
    int_0^inf exp(f(s)) ds with t = xmin e^s, z = lam xmin, f(s) = (1 - alpha) s - z (e^s - 1).

    f is concave with its peak at s* = ln((1 - alpha) / z) when that is > 0 (else at 0); the
    integral is taken of exp(f - f(s*)) up to where z (e^s - 1) exceeds f(s*) by far."""
    z = lam * xmin
    if z <= 0.0:
        if alpha <= 1.0:
            return math.inf
        return (1.0 - alpha) * math.log(xmin) - math.log(alpha - 1.0)
    peak = math.log((1.0 - alpha) / z) if alpha < 1.0 and (1.0 - alpha) / z > 1.0 else 0.0
    f_peak = (1.0 - alpha) * peak - z * math.expm1(peak)

    def integrand(s: float) -> float:
        return math.exp((1.0 - alpha) * s - z * math.expm1(s) - f_peak)

    s_end = max(peak, 0.0) + 1.0 + math.log1p((max(f_peak, 0.0) + 800.0) / z)
    points = [peak] if 0.0 < peak < s_end else None
    value, _ = integrate.quad(integrand, 0.0, s_end, points=points, limit=400, epsabs=0.0,
                              epsrel=1e-11)
    return (1.0 - alpha) * math.log(xmin) - z + f_peak + math.log(value)


def truncated_power_law_loglikelihoods(x: np.ndarray, alpha: float, lam: float,
                                       xmin: float) -> np.ndarray:
    """ln p(x_i) of the power law with exponential cut-off on x >= xmin."""
    return -alpha * np.log(x) - lam * x - _log_truncated_normaliser(alpha, lam, xmin)


# ---------------------------------------------------------------------- fits
def _minimise(objective, starts: Sequence[Sequence[float]]) -> np.ndarray:
    """The best of Nelder-Mead runs from ``starts`` (a non-finite objective counts as +inf)."""
    def safe(theta: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            value = objective(theta)
        return value if math.isfinite(value) else math.inf

    best_theta, best_value = None, math.inf
    for start in starts:
        result = optimize.minimize(safe, np.asarray(start, dtype=np.float64),
                                   method="Nelder-Mead",
                                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000,
                                            "maxfev": 8000})
        if result.fun < best_value:
            best_theta, best_value = result.x, float(result.fun)
    if best_theta is None:
        raise ValueError("no start gave a finite likelihood")
    return best_theta


def _fit_lognormal(x: np.ndarray, xmin: float) -> tuple[float, float]:
    logs = np.log(x)
    m, s = float(logs.mean()), max(float(logs.std()), 1e-3)

    def negative(theta: np.ndarray) -> float:
        return -float(lognormal_loglikelihoods(x, theta[0], math.exp(theta[1]), xmin).sum())

    starts = [(m, math.log(s)), (math.log(xmin), math.log(2 * s)), (m - 2 * s, math.log(2 * s))]
    mu, log_sigma = _minimise(negative, starts)
    return float(mu), float(math.exp(log_sigma))


def _fit_truncated(x: np.ndarray, xmin: float, alpha_pl: float) -> tuple[float, float]:
    """(alpha, lam) maximising the truncated power law's likelihood; lam = exp(theta[1])."""
    scale = float(x.mean())

    def negative(theta: np.ndarray) -> float:
        lam = math.exp(theta[1])
        return -float(truncated_power_law_loglikelihoods(x, theta[0], lam, xmin).sum())

    starts = [(alpha_pl, math.log(1e-3 / scale)), (1.0, math.log(1.0 / scale)),
              (alpha_pl - 1.0, math.log(0.1 / scale))]
    alpha, log_lam = _minimise(negative, starts)
    return float(alpha), float(math.exp(log_lam))


# ---------------------------------------------------------------------- tests
def vuong_test(first: np.ndarray, second: np.ndarray) -> tuple[float, float, float]:
    """(R, p, R / sqrt(n sigma^2)) for non-nested models (Vuong 1989; Clauset et al. C.6)."""
    d = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    n = d.size
    R = float(d.sum())
    variance = float(((d - d.mean()) ** 2).mean()) if n else 0.0
    if n == 0 or variance <= 0.0:
        return R, 1.0, math.nan
    scale = math.sqrt(n * variance)
    return R, float(special.erfc(abs(R) / (math.sqrt(2.0) * scale))), R / scale


def nested_test(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """(R, p) for a model (first) nested in the other with one extra parameter:
    p = P(chi^2_1 > 2 |R|)."""
    R = float(np.sum(np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)))
    return R, float(stats.chi2.sf(2.0 * abs(R), 1))


def compare_tail(
    eigs: torch.Tensor | np.ndarray | Sequence[float],
    xmin: float | None = None,
    alternatives: Sequence[str] = ALTERNATIVES,
) -> TailTests:
    """The power law against ``alternatives`` on the tail ``eigs >= xmin``.

    Args:
        eigs: the spectrum (any order).
        xmin: start of the tail; None: the KS-optimal xmin of
            :func:`svd_callback.rmt.fit_power_law` (the ``powerlaw`` package's convention).
        alternatives: any of :data:`ALTERNATIVES`.

    Returns:
        A :class:`TailTests`; never raises for bad data (a ``reason`` instead).
    """
    unknown = sorted(set(alternatives) - set(ALTERNATIVES))
    if unknown:
        raise ValueError(f"unknown alternatives {unknown}; known: {list(ALTERNATIVES)}")
    values = np.sort(np.asarray(torch.as_tensor(eigs).detach().cpu().reshape(-1),
                                dtype=np.float64))
    if xmin is None:
        from svd_callback.rmt.powerlaw import fit_power_law

        fit = fit_power_law(values)
        if fit.reason is not None or not math.isfinite(fit.xmin):
            return TailTests(math.nan, math.nan, 0, reason=f"power-law fit failed: {fit.reason}")
        xmin = float(fit.xmin)
    if not (math.isfinite(xmin) and xmin > 0):
        return TailTests(xmin, math.nan, 0, reason=f"xmin must be finite and > 0, got {xmin}")
    tail = values[np.isfinite(values) & (values >= xmin)]
    n = int(tail.size)
    if n < MIN_TAIL:
        return TailTests(xmin, math.nan, n, reason=f"tail of {n} < {MIN_TAIL} values")
    log_ratio = float(np.log(tail / xmin).sum())
    if log_ratio <= 0.0:
        return TailTests(xmin, math.nan, n, reason="every tail value equals xmin")
    alpha = 1.0 + n / log_ratio
    power = power_law_loglikelihoods(tail, alpha, xmin)
    out: dict[str, LikelihoodRatio] = {}
    for name in alternatives:
        if name == "exponential":
            spread = float(tail.mean()) - xmin
            lam = 1.0 / spread
            R, p, normalized = vuong_test(power, exponential_loglikelihoods(tail, lam, xmin))
            out[name] = LikelihoodRatio(name, R, p, normalized, False, (lam,))
        elif name == "lognormal":
            mu, sigma = _fit_lognormal(tail, xmin)
            R, p, normalized = vuong_test(power, lognormal_loglikelihoods(tail, mu, sigma, xmin))
            out[name] = LikelihoodRatio(name, R, p, normalized, False, (mu, sigma))
        else:
            t_alpha, lam = _fit_truncated(tail, xmin, alpha)
            truncated = truncated_power_law_loglikelihoods(tail, t_alpha, lam, xmin)
            if float(truncated.sum()) < float(power.sum()):
                # the nesting model can always reach the power law (lam -> 0): a worse optimum
                # is the optimiser stopping early, and the power law itself is the better fit
                truncated, t_alpha, lam = power, alpha, 0.0
            R, p = nested_test(power, truncated)
            out[name] = LikelihoodRatio(name, R, p, math.nan, True, (t_alpha, lam))
    return TailTests(xmin, alpha, n, out)


def tail_verdict(tests: TailTests, level: float = 0.1) -> str:
    """One of :data:`VERDICTS` from the three tests at significance ``level``.

    An alternative is *better* when R < 0 with p < level. ``"power law"``: the power law beats
    the exponential (R > 0, p < level) and no alternative is better. Otherwise the better
    alternative of largest likelihood (most negative R) names the verdict: ``"exponential"``,
    ``"log-normal"``, or ``"truncated"``, the last only when the power law beats the exponential
    (a cut-off that turns the tail exponential is not a truncated power law; the next better
    alternative is taken instead). ``"undecided"``: nothing significant, a test missing, or
    nothing tested.
    """
    c = tests.comparisons
    if tests.reason is not None or any(name not in c for name in ALTERNATIVES):
        return "undecided"
    beats_exponential = c["exponential"].R > 0 and c["exponential"].p < level
    better = sorted((c[name].R, name) for name in ALTERNATIVES
                    if c[name].R < 0 and c[name].p < level)
    labels = {"exponential": "exponential", "lognormal": "log-normal",
              "truncated_power_law": "truncated"}
    for _, name in better:
        if name == "truncated_power_law" and not beats_exponential:
            continue
        return labels[name]
    if better:
        return "undecided"
    return "power law" if beats_exponential else "undecided"
