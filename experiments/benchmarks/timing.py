"""Shared timing helper for the benchmarks (run as scripts from this folder)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls of ``fn`` and the last call's result."""
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def interleaved_best(fns: dict[str, Callable[[], object]],
                     rounds: int) -> tuple[dict[str, float], dict[str, object]]:
    """Best wall time of each function over ``rounds`` rounds that call every function once,
    in order, so that a slow spell of a shared machine hits all of them alike; also the last
    results."""
    best = dict.fromkeys(fns, math.inf)
    out: dict[str, object] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, out
