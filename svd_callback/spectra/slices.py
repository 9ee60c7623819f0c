"""``slices`` mode (WeightWatcher): the ``prod(k)`` kernel-position matrices ``W[:, :, i, j]``
pooled into one spectrum."""

from __future__ import annotations

from torch import Tensor

from svd_callback.spectra.solver import DEFAULT_CHUNK_ELEMS, _check_stack, _stack_svdvals


def stacked_slice_matrices(weights: Tensor, finite_checked: bool = False) -> Tensor:
    """Kernel slices of a stack: ``(L, d, c, *k) -> (L, prod(k), N, M)`` with ``N >= M``.

    Slice ``q`` (row-major over the kernel positions) is ``W[:, :, i, j, ...]``, transposed
    when ``d < c``. A linear weight gives its one matrix.
    """
    weights = _check_stack(weights, finite_checked=finite_checked)
    layers, d, c = weights.shape[:3]
    slices = weights.reshape(layers, d, c, -1).permute(0, 3, 1, 2)
    return slices.mT if d < c else slices


def slice_matrices(weight: Tensor) -> Tensor:
    """WeightWatcher's conv slices ``W[:, :, i, j]`` (``N >= M``): ``(prod(k), N, M)``."""
    return stacked_slice_matrices(weight.unsqueeze(0))[0]


def stacked_slice_svdvals(
    weights: Tensor, *, method: str = "auto", chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    finite_checked: bool = False,
) -> Tensor:
    """Pooled slice singular values of ``L`` same-shape weights: ``(L, prod(k) * M)``.
    ``finite_checked``: skip the finite check (the caller made it)."""
    mats = stacked_slice_matrices(weights, finite_checked)
    layers = mats.shape[0]
    return _stack_svdvals(mats.flatten(0, 1), layers, weights.shape[1:], method, chunk_elems)


def slice_svdvals(
    weight: Tensor, *, method: str = "auto", chunk_elems: int = DEFAULT_CHUNK_ELEMS
) -> Tensor:
    """WeightWatcher 0.7.7's pooled ESD of a conv: the singular values of every slice.

    The ``prod(k)`` matrices ``W[:, :, i, j]`` (d x c, transposed so N >= M) each give M values;
    all ``prod(k) * M`` are pooled, descending, unscaled (WeightWatcher's 1/sqrt(2) conv
    rescaling is the caller's normalisation). Groups are ignored, as WeightWatcher does.
    WeightWatcher slices the other way when ``d + c < kh + kw`` and treats a conv1d weight as one
    matrix; neither quirk is reproduced here (every kernel position is a slice).
    """
    return stacked_slice_svdvals(weight.unsqueeze(0), method=method, chunk_elems=chunk_elems)[0]
