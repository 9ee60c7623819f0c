"""Batched LAPACK calls spread over the CPU's threads, one matrix per thread at a time.

On CPU, ``torch.linalg.eigvalsh`` and ``torch.linalg.svdvals`` of a ``(B, n, n)`` batch call
LAPACK once per matrix, one after the other, and LAPACK's own threading gains next to nothing
for the small and medium matrices of conv slices and frequency blocks. Splitting the batch into
one contiguous part per thread, each solved with one LAPACK thread, uses every core (speed-ups
in docs/methods.md#measurements-behind-the-choices).

While the parts run, torch's intra-op thread count is set to 1 (so that p threads each running
LAPACK do not start p x p threads) and restored afterwards. Every matrix is thus solved alone by
single-threaded LAPACK, so the values are those of ``fn`` under ``torch.set_num_threads(1)``,
bit for bit, whatever the thread count and the split (multi-threaded LAPACK rounds differently
on matrices from 128 up). Off CPU, for small batches, or with a single thread, ``fn`` is called
on the whole batch as is.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

__all__ = [
    "MIN_PARALLEL_WORK",
    "map_batch",
    "parallel_workers",
]

MIN_PARALLEL_WORK = 1 << 21
"""Smallest batch work (B * n^3 for the smaller side n) worth splitting: about a millisecond of
LAPACK, against ~0.1 ms of thread hand-off."""

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _pool, _pool_size, _lock
    _pool, _pool_size, _lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size < workers:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="svd-callback-lapack")
        _pool_size = workers
    return _pool


def parallel_workers(mats: Tensor) -> int:
    """How many threads :func:`map_batch` would use for ``mats`` (1: the plain call)."""
    if mats.device.type != "cpu" or mats.dim() != 3:
        return 1
    batch, m, n = mats.shape
    if batch < 2 or batch * min(m, n) ** 3 < MIN_PARALLEL_WORK:
        return 1
    return min(torch.get_num_threads(), batch)


def map_batch(fn: Callable[[Tensor], Tensor], mats: Tensor) -> Tensor:
    """``fn(mats)`` for a per-matrix batched ``fn`` (``(B, m, n) -> (B, k)``), computed as
    ``cat(fn(part) for part in split(mats))`` on as many threads as torch uses."""
    workers = parallel_workers(mats)
    if workers == 1:
        return fn(mats)
    parts = torch.tensor_split(mats, workers)
    grad_enabled = torch.is_grad_enabled()  # thread-local: carried into the pool's threads

    def solve(part: Tensor) -> Tensor:
        with torch.set_grad_enabled(grad_enabled):
            return fn(part)

    with _lock:  # one split computation at a time: the thread setting is process-wide
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            pool = _executor(workers - 1)
            futures = [pool.submit(solve, part) for part in parts[1:]]
            try:
                first = fn(parts[0])
            finally:
                results = [f.result() for f in futures]
        finally:
            torch.set_num_threads(threads)
    return torch.cat([first, *results])
