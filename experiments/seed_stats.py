"""Spread of one number across training seeds: mean, sample standard deviation, range and the
two-sided 95% Student-t interval of the mean, mean +- t_{0.975, n-1} * std / sqrt(n) (any
statistics textbook; e.g. Wasserman, All of Statistics, 2004, section 10.7)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from scipy import stats


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
        """``mean ± std (min-max; 95% CI [a, b]; n seeds)``; one value is shown alone."""
        f = _formatter(digits)
        if self.n == 0:
            return "no finite value"
        if self.n == 1:
            return f"{f(self.mean)} (one seed)"
        return (f"{f(self.mean)} ± {f(self.std)} (range {f(self.low)} to {f(self.high)}; 95% "
                f"t-interval [{f(self.ci_low)}, {f(self.ci_high)}]; n = {self.n} seeds)")


def spread(values: Iterable[float]) -> SeedSpread:
    """The spread of the finite ``values`` (one per seed)."""
    kept = tuple(float(v) for v in values if v is not None and math.isfinite(float(v)))
    n = len(kept)
    if n == 0:
        return SeedSpread((), *([math.nan] * 6))
    mean = statistics.fmean(kept)
    if n == 1:
        return SeedSpread(kept, mean, math.nan, mean, mean, math.nan, math.nan)
    std = statistics.stdev(kept)
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return SeedSpread(kept, mean, std, min(kept), max(kept), mean - half, mean + half)


def _formatter(digits: int):
    def f(value: float) -> str:
        return f"{value:.{digits}g}" if math.isfinite(value) else "nan"
    return f
