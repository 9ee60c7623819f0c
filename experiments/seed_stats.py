"""Intervals for the few-seed experiments: no Student-t interval on three values.

- :func:`spread`: one number per training seed. Mean, sample standard deviation, range and the
  bootstrap percentile interval of the mean over seeds (Efron & Tibshirani, An Introduction to
  the Bootstrap, 1993, ch. 13). With n <= 6 seeds the bootstrap distribution is computed exactly,
  over all n^n equally likely ordered resamples; beyond that from 20000 seeded resamples. With
  3 seeds the 95% interval is the range of the values (a resample of three copies of the
  smallest value has probability 1/27 > 2.5%): it says how far the seeds spread, nothing more.
- :func:`cluster_interval`: the same bootstrap with whole clusters resampled (e.g. the layers of
  one seed), for a statistic pooled over the clusters' members.
- :func:`proportion`: a count k of n with its Wilson score interval (Wilson 1927; Agresti &
  Coull 1998, eq. 2), p~ +- z sqrt(p(1-p)/n + z^2/(4n^2)) / (1 + z^2/n), p~ = (p + z^2/(2n)) /
  (1 + z^2/n), which stays inside [0, 1] and is sensible at k = 0 or k = n.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

EXACT_MAX_N = 6
"""Up to this many units the bootstrap enumerates every resample (6^6 = 46656)."""
RESAMPLES = 20000
"""Monte-Carlo resamples beyond ``EXACT_MAX_N`` units (generator seed 0: reproducible)."""


def _resample_indices(n: int) -> np.ndarray:
    """(R, n) indices of the resamples: all n^n of them for n <= EXACT_MAX_N, else RESAMPLES
    from a generator seeded 0."""
    if n <= EXACT_MAX_N:
        return np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    return np.random.default_rng(0).integers(0, n, size=(RESAMPLES, n))


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of the empirical distribution (the
    smallest value whose empirical CDF reaches p: ``numpy.quantile(..., "inverted_cdf")``)."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail], method="inverted_cdf")
    return float(low), float(high)


def bootstrap_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN for none)."""
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return _percentiles(x[_resample_indices(x.size)].mean(axis=1), level)


def cluster_interval(
    clusters: Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], float] | None = None,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) of the pooled members,
    resampling whole clusters with replacement (NaN without clusters)."""
    groups = [np.asarray([float(v) for v in c], dtype=np.float64) for c in clusters]
    if not groups:
        return math.nan, math.nan
    statistic = statistic or (lambda pooled: float(pooled.mean()))
    values = np.array([statistic(np.concatenate([groups[i] for i in row]))
                       for row in _resample_indices(len(groups))])
    return _percentiles(values, level)


@dataclass(frozen=True)
class SeedSpread:
    """The finite values of one number over seeds and their spread (NaN where undefined)."""

    values: tuple[float, ...]
    mean: float
    std: float
    low: float
    high: float
    ci_low: float
    ci_high: float

    @property
    def n(self) -> int:
        return len(self.values)

    def text(self, digits: int = 3) -> str:
        """``mean (values a, b, c; bootstrap 95% [lo, hi])``; one value is shown alone."""
        f = _formatter(digits)
        if self.n == 0:
            return "no finite value"
        if self.n == 1:
            return f"{f(self.mean)} (one seed)"
        shown = ", ".join(f(v) for v in self.values)
        interval = f"[{f(self.ci_low)}, {f(self.ci_high)}]"
        return f"{f(self.mean)} (seeds {shown}; bootstrap 95% {interval})"


def spread(values: Iterable[float | None]) -> SeedSpread:
    """The spread of the finite ``values`` (one per seed, in seed order)."""
    kept = tuple(float(v) for v in values if v is not None and math.isfinite(float(v)))
    n = len(kept)
    if n == 0:
        return SeedSpread((), *([math.nan] * 6))
    mean = statistics.fmean(kept)
    std = statistics.stdev(kept) if n > 1 else math.nan
    low, high = bootstrap_interval(kept)
    return SeedSpread(kept, mean, std, min(kept), max(kept), low, high)


@dataclass(frozen=True)
class Proportion:
    """k of n with its Wilson score interval."""

    k: int
    n: int
    low: float
    high: float

    @property
    def fraction(self) -> float:
        return self.k / self.n if self.n else math.nan

    def text(self) -> str:
        """``k/n (Wilson 95% [a, b])``."""
        if self.n == 0:
            return "0/0"
        return f"{self.k}/{self.n} (Wilson 95% [{self.low:.2f}, {self.high:.2f}])"


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (NaN for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k = {k}, n = {n}")
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    p = k / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(k: int, n: int, level: float = 0.95) -> Proportion:
    """``k`` of ``n`` with its Wilson interval."""
    return Proportion(int(k), int(n), *wilson_interval(int(k), int(n), level))


def _formatter(digits: int):
    def f(value: float) -> str:
        return f"{value:.{digits}g}" if math.isfinite(value) else "nan"
    return f
