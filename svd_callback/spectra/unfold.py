"""``unfold`` mode (Praggastis et al. 2022): the im2col matrix ``W.reshape(d, c * prod(k))``
of each group, its singular values and (for the class analyses) its full SVD."""

from __future__ import annotations

import torch
from torch import Tensor

from svd_callback.spectra.solver import (
    DEFAULT_CHUNK_ELEMS,
    SpectralError,
    _check_stack,
    _shape_str,
    _stack_svdvals,
)


def stacked_unfold_matrices(weights: Tensor, groups: int = 1) -> Tensor:
    """im2col matrices of a stack of weights: ``(L, d, c, *k) -> (L, g, d/g, c*prod(k))``.

    Row ``o`` of group ``j`` is output channel ``j * d/g + o``; the columns follow the (c, *k)
    order of ``torch.nn.functional.unfold``. Grouped convs are block diagonal, so each group has
    its own matrix (flattening the whole grouped weight would mix unrelated blocks).
    """
    return _group_rows(_check_stack(weights, groups), groups)


def _group_rows(weights: Tensor, groups: int) -> Tensor:
    layers, d = weights.shape[:2]
    return weights.reshape(layers, groups, d // groups, -1)


def unfold_matrix(weight: Tensor, groups: int = 1) -> Tensor:
    """im2col matrix of each group: ``(d, c, *k) -> (g, d/g, c*prod(k))`` (Praggastis et al.).

    ``weight`` may be a linear weight ``(d, c)``, a 1-/2-/3-d conv weight, or a transposed conv
    weight ``(in, out/g, *k)`` (read as the weight of its adjoint conv: rows are the transposed
    conv's input channels).
    """
    return stacked_unfold_matrices(weight.unsqueeze(0), groups)[0]


def stacked_unfold_svdvals(
    weights: Tensor,
    groups: int = 1,
    *,
    method: str = "auto",
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    finite_checked: bool = False,
) -> Tensor:
    """Pooled unfold singular values of ``L`` same-shape weights: ``(L, g * min(d/g, c*K))``.
    ``finite_checked``: skip the finite check (the caller made it)."""
    return _unfold_svdvals(_check_stack(weights, groups, finite_checked), groups, method,
                           chunk_elems)


def _unfold_svdvals(weights: Tensor, groups: int, method: str, chunk_elems: int) -> Tensor:
    mats = _group_rows(weights, groups)
    return _stack_svdvals(mats.flatten(0, 1), mats.shape[0], weights.shape[1:], method, chunk_elems)


def unfold_svdvals(
    weight: Tensor, groups: int = 1, *, method: str = "auto", chunk_elems: int = DEFAULT_CHUNK_ELEMS
) -> Tensor:
    """Singular values of every group's im2col matrix, pooled, descending."""
    return stacked_unfold_svdvals(
        weight.unsqueeze(0), groups, method=method, chunk_elems=chunk_elems
    )[0]


def _normalise_signs(u: Tensor, s: Tensor, vh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flip (u_i, v_i) together so that the largest-|entry| of each v_i is positive."""
    if vh.shape[-1] == 0:
        return u, s, vh
    idx = vh.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(vh.gather(-1, idx))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return u * sign.mT, s, vh * sign


def stacked_unfold_svd(
    weights: Tensor, groups: int = 1, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS
) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of each group's im2col matrix for ``L`` same-shape weights.

    Returns ``U (L, g, d/g, r)``, ``S (L, g, r)``, ``Vh (L, g, r, c*K)`` with ``r = min(d/g,
    c*K)``, ``S`` descending per group, signs normalised (see :func:`unfold_svd`).
    """
    mats = stacked_unfold_matrices(weights, groups)
    layers, g, m, n = mats.shape
    flat = mats.reshape(layers * g, m, n)
    step = max(1, int(chunk_elems) // max(1, m * n))
    parts = []
    for start in range(0, flat.shape[0], step):
        chunk = flat[start : start + step]
        try:
            parts.append(torch.linalg.svd(chunk, full_matrices=False))
        except RuntimeError as err:
            try:
                u, s, vh = torch.linalg.svd(chunk.double(), full_matrices=False)
                parts.append((u.to(chunk.dtype), s.to(chunk.dtype), vh.to(chunk.dtype)))
            except RuntimeError as err64:
                raise SpectralError(
                    f"SVD of {chunk.shape[0]} unfold matrices of shape {_shape_str((m, n))} "
                    f"(weight shape {_shape_str(weights.shape[1:])}) failed to converge, "
                    f"also in float64: {err}"
                ) from err64
    u, s, vh = (torch.cat(p) if len(parts) > 1 else p[0] for p in zip(*parts, strict=True))
    u, s, vh = _normalise_signs(u, s, vh)
    r = s.shape[-1]
    return u.reshape(layers, g, m, r), s.reshape(layers, g, r), vh.reshape(layers, g, r, n)


def unfold_svd(
    weight: Tensor, groups: int = 1, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS
) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of each group's im2col matrix: ``Wbar_j = U_j diag(S_j) Vh_j`` (Praggastis et al.).

    Returns ``U (g, d/g, r)``, ``S (g, r)``, ``Vh (g, r, c*prod(k))``, ``r = min(d/g, c*K)``.
    Row ``i`` of ``Vh[j]`` reshaped to ``(c, *k)`` is the input-side filter of SVD-neuron ``i``
    of group ``j``; column ``i`` of ``U[j]`` mixes that group's output channels. With ``x_p``
    the im2col patch of output position ``p`` (``F.unfold`` with the layer's padding, stride
    and dilation) the neuron's signal is ``u_i^T (y_p - b) = S_i <v_i, x_p>``.

    Sign convention: the entry of largest magnitude of each ``v_i`` is positive (``u_i`` is
    flipped with it), so vectors and signals are comparable across epochs.

    Raises:
        NonFiniteWeightError: NaN/Inf entries. SpectralError: the SVD did not converge, also
        when retried in float64.
    """
    u, s, vh = stacked_unfold_svd(weight.unsqueeze(0), groups, chunk_elems=chunk_elems)
    return u[0], s[0], vh[0]
