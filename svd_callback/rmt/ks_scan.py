"""The Kolmogorov-Smirnov xmin scan of a power-law tail fit, exact and pruned.

For sorted eigenvalues x_0 <= ... <= x_{N-1} (L = ln x) and a candidate xmin = x_i with tail
size n_i = N - i, the continuous power-law MLE and the KS distance of the fit are
(Clauset, Shalizi & Newman 2009; Martin & Mahoney 2021; WeightWatcher 0.7.7 ``WWFit``)::

    alpha_i = 1 + n_i / d_i,          d_i = sum_{j >= i} ln(x_j / x_i)
    D_i     = max_{j >= i} | F_i(x_j) - e_i(j) |,
    F_i(x)  = 1 - (x / x_i)^(1 - alpha_i),   e_i(j) = (r_j - i) / n_i

where r_j = j (WeightWatcher: empirical CDF ``arange(n) / n`` even on ties) or r_j = the first
index of x_j's run of equal values (the ``powerlaw`` package: fraction of the tail strictly below
x_j). The fit keeps the candidate of smallest D.

Computing every D_i costs O(N^2) exponentials. :func:`pruned_scan` finds the same minimiser with
far fewer, by exact branch and bound:

* ``max |F_i - e_i|`` over any subset of the tail is a **lower bound** of D_i. Grids taking every
  s-th rank give cheap lower bounds for every candidate (float32, widened by a rigorous
  rounding margin), at strides decreasing level by level down to 1.
* After each level the few candidates with the smallest bounds are evaluated exactly (float64),
  and the best exact D so far prunes every candidate whose lower bound exceeds it (plus a margin).
* Rows are processed in chunks of bounded size, so memory stays O(chunk) whatever N is.

The result is the set of candidates whose exact D is within ``margin`` of the smallest; the caller
settles the choice among them with one canonical per-candidate evaluation, so the pruned scan and
the full scan (:func:`full_scan`) give the same answer to the bit. Everything runs in torch on
the eigenvalues' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

F32_MARGIN = 2e-6
"""Absolute error bound of a float32 evaluation of |F - e| (values in [0, 1]): t = c (L_j - L_i)
is formed in float64 and rounded to float32 (moves exp(t) by <= |t| e^t 6e-8 <= 2.2e-8), expf
is within 1 ulp (1.2e-7), and forming 1 - (r_j - i)/n and the difference costs ~4 roundings
(2.4e-7): below 4e-7 in total; 2e-6 leaves a factor 5."""

EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}
"""t is clamped here: exp(t) stays a normal number (subnormal arithmetic is ~100x slower on
x86), changing F by < 2e-35 (float32) or 1e-304 (float64)."""

CHUNK_ELEMENTS = 1 << 17
"""Rows x columns evaluated per torch call: about 1 MB per float64 temporary."""

HEAD = 4
"""Candidates evaluated exactly after each level (the smallest lower bounds)."""


@dataclass(frozen=True)
class ScanInput:
    """Sorted data prepared for a scan.

    Attributes:
        L: ln x, ascending, float64.
        r: float64 empirical-CDF index of every position (j, or the start of j's run of ties).
        candidates: int64 indices i of the admissible xmins, ascending.
        c: 1 - alpha_i for every candidate (see :func:`prepare`).
        L1: the 2 x N float64 matrix [L; 1], so that c L_j - c L_i is one small matmul.
    """

    L: torch.Tensor
    r: torch.Tensor
    candidates: torch.Tensor
    c: torch.Tensor
    L1: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.L.numel())


def tail_log_sums(L: torch.Tensor) -> torch.Tensor:
    """d_i = sum_{j >= i} (L_j - L_i) for every i, from non-negative terms only.

    d_i = d_{i+1} + (N - 1 - i) (L_{i+1} - L_i), so d is a suffix sum of non-negative gap
    terms: its relative error is at most ~N eps, with no cancellation even for short tails
    (a plain ``sum(L[i:]) - n L_i`` cancels catastrophically there).
    """
    N = L.numel()
    d = torch.zeros_like(L)
    if N > 1:
        weights = torch.arange(N - 1, 0, -1, device=L.device, dtype=L.dtype)
        terms = weights * (L[1:] - L[:-1])
        d[:-1] = terms.flip(0).cumsum(0).flip(0)
    return d


def prepare(L: torch.Tensor, r: torch.Tensor, candidates: torch.Tensor,
            d: torch.Tensor) -> ScanInput:
    """Exponents for the scan: c_i = 1 - alpha_i = -n_i / d_i.

    A tail of equal values (d_i = 0, alpha = inf) has F = 0 on the whole tail, which any very
    negative finite c reproduces; -1e300 avoids inf * 0 = nan.
    """
    N = L.numel()
    n = (N - candidates).to(L.dtype)
    di = d[candidates]
    c = torch.where(di > 0, -n / di, torch.full_like(di, -1e300))
    return ScanInput(L=L, r=r, candidates=candidates, c=c,
                     L1=torch.stack([L, torch.ones_like(L)]))


def _grid(N: int, stride: int, device: torch.device) -> torch.Tensor:
    """Grid ranks 0, s, 2s, ... plus the last rank N - 1."""
    g = torch.arange(0, N, stride, device=device)
    if int(g[-1]) != N - 1:
        g = torch.cat([g, g.new_tensor([N - 1])])
    return g


def _max_gap(data: ScanInput, rows: torch.Tensor, cols: torch.Tensor,
             dtype: torch.dtype) -> torch.Tensor:
    """max over the grid columns ``cols`` of |F_i(x_j) - e_i(j)| for candidate positions ``rows``.

    Columns before a row's own xmin are neutralised by clamping (t = c (L_j - L_i) > 0 there is
    clamped to 0, so F = 0; 1 - e > 1 is clamped to 1, so e = 0): they count as the tail's first
    point, where F = e = 0.
    """
    i = data.candidates[rows]
    c = data.c[rows]
    coef = torch.stack([c, -c * data.L[i]], dim=1)
    fm = (coef @ data.L1[:, cols]).to(dtype)  # t = c L_j - c L_i, in float64 first
    fm.clamp_(min=EXP_FLOOR[dtype], max=0.0).exp_()  # F = 1 - fm
    # 1 - e = 1 - (r_j - i) / n, with r_j - i an exact integer (float32 below 2^24)
    one_minus_e = data.r[cols].to(dtype)[None, :] - i.to(dtype)[:, None]
    neg_inv_n = -1.0 / (data.n - i).to(dtype)
    one_minus_e.mul_(neg_inv_n[:, None]).add_(1.0).clamp_(max=1.0)
    return one_minus_e.sub_(fm).abs_().amax(dim=1)


def _row_chunks(data: ScanInput, rows: torch.Tensor, grid: torch.Tensor, budget: int):
    """Split ``rows`` (ascending) into (rows, grid columns) chunks of about ``budget`` elements;
    a chunk's columns start at the last grid rank <= its first row's xmin."""
    if rows.numel() == 0:
        return
    first_col = (torch.searchsorted(grid, data.candidates[rows], right=True) - 1).tolist()
    ncols = grid.numel()
    start, total = 0, len(first_col)
    while start < total:
        first = first_col[start]
        count = max(1, budget // (ncols - first))
        yield rows[start:start + count], grid[first:]
        start += count


def max_gaps(data: ScanInput, rows: torch.Tensor, stride: int, dtype: torch.dtype,
             budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """:func:`_max_gap` on the stride-``stride`` grid for ``rows`` (ascending), chunked; with
    stride 1 and float64 this is D itself. Returned in float64."""
    grid = _grid(data.n, stride, data.L.device)
    parts = [_max_gap(data, chunk, cols, dtype) for chunk, cols in _row_chunks(data, rows, grid,
                                                                                budget)]
    if not parts:
        return data.L.new_empty(0)
    return torch.cat(parts).to(torch.float64)


def spread_gaps(data: ScanInput, rows: torch.Tensor, points: int, dtype: torch.dtype,
                budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """max |F_i - e_i| over about ``points`` to 2 ``points`` ranks of each row's tail.

    Rows are grouped by tail length n_i in [2^b, 2^(b+1)); a group uses the global grid of
    stride max(1, 2^b // points), so that every row gets a comparable resolution relative to
    its own tail while the evaluation stays one small matmul per chunk (no gathers)."""
    out = torch.empty(rows.numel(), dtype=torch.float64, device=rows.device)
    n = data.n - data.candidates[rows]
    strides = torch.clamp(torch.pow(2, torch.floor(torch.log2(n.double()))).long() // points,
                          min=1)
    for stride in strides.unique().tolist():
        members = torch.nonzero(strides == stride).flatten()
        out[members] = max_gaps(data, rows[members], stride, dtype, budget)
    return out


def full_scan(data: ScanInput, budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Exact float64 D of every candidate: the O(N^2) reference, chunked."""
    rows = torch.arange(data.candidates.numel(), device=data.L.device)
    return max_gaps(data, rows, 1, torch.float64, budget)


def point_schedule(N: int, first: int = 32, factor: int = 8, direct: int = 1536) -> list[int]:
    """Grid sizes per tail, coarse to fine: ``first``, x ``factor`` ... while below N / 4;
    the last level (0) evaluates every rank of the tail. Up to ``direct`` eigenvalues the
    float32 full scan alone is cheaper than the calls of the coarse levels."""
    points = []
    k = first if direct < N else N
    while k < N / 4:
        points.append(k)
        k *= factor
    points.append(0)
    return points


def pruned_scan(data: ScanInput, margin: float, budget: int = CHUNK_ELEMENTS,
                always: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates (positions into ``data.candidates``) whose exact D is within ``margin`` of
    the minimum, with those exact D values, by branch and bound.

    Every candidate whose exact D is within ``margin`` of the exact minimum is returned, so
    choosing among the returned ones gives the same answer as choosing among all. ``always``
    marks candidates returned regardless of their D.
    """
    device = data.L.device
    m = data.candidates.numel()
    lower = torch.zeros(m, dtype=torch.float64, device=device)
    exact = torch.full((m,), math.nan, dtype=torch.float64, device=device)
    alive = torch.arange(m, device=device)
    best = math.inf
    for points in point_schedule(data.n):
        alive = alive[lower[alive] <= best + margin]
        todo = alive[exact[alive].isnan()]
        if todo.numel():
            if points:
                gaps = spread_gaps(data, todo, points, torch.float32, budget)
            else:
                gaps = max_gaps(data, todo, 1, torch.float32, budget)
            bound = gaps - F32_MARGIN
            lower[todo] = torch.maximum(lower[todo], bound)
        alive = alive[lower[alive] <= best + margin]
        todo = alive[exact[alive].isnan()]
        if todo.numel():
            head = todo[torch.argsort(lower[todo], stable=True)[:HEAD]].sort().values
            D = max_gaps(data, head, 1, torch.float64, budget)
            exact[head] = D
            lower[head] = D
            best = min(best, float(D.min()))
    keep = lower <= best + margin
    if always is not None:
        keep |= always
    todo = torch.nonzero(keep & exact.isnan()).flatten()
    if todo.numel():
        exact[todo] = max_gaps(data, todo, 1, torch.float64, budget)
    done = torch.nonzero(keep).flatten()
    D = exact[done]
    if D.numel() == 0:
        return done, D
    near = float(D.min()) + margin >= D
    if always is not None:
        near |= always[done]
    return done[near], D[near]


def near_best(data: ScanInput, margin: float, prune: bool = True,
              always: torch.Tensor | None = None,
              budget: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate positions within ``margin`` of the smallest D, pruned or by the full scan."""
    if prune:
        return pruned_scan(data, margin, budget, always)
    D = full_scan(data, budget)
    if D.numel() == 0:
        return torch.arange(0, device=data.L.device), D
    near = float(D.min()) + margin >= D
    if always is not None:
        near |= always
    rows = torch.nonzero(near).flatten()
    return rows, D[rows]
