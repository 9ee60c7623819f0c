"""Shared timing helpers of the benchmarks (imported by them; not a script)."""

from __future__ import annotations

import math
import statistics
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


def median_time(
    fn: Callable[[], object],
    repeats: int,
    *,
    warmup: bool = False,
    sync: Callable[[], object] | None = None,
) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls of ``fn`` (after one untimed call with
    ``warmup``), each timed up to the return of ``sync()`` when given (e.g.
    ``torch.cuda.synchronize``: an accelerator's queued work), and the last call's result."""
    def call() -> object:
        out = fn()
        if sync is not None:
            sync()
        return out

    if warmup:
        call()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out
