"""``operator`` mode (Sedghi, Gupta & Long, ICLR 2019): every singular value of the circular
conv as a linear map on an input of a given spatial size."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from svd_callback.spectra.solver import (
    DEFAULT_CHUNK_ELEMS,
    _check_stack,
    _shape_str,
    _svdvals,
)
from svd_callback.spectra.unfold import _unfold_svdvals


def _ntuple(value: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        out = (value,) * dims
    else:
        out = tuple(int(v) for v in value)
        if len(out) == 1 and dims > 1:
            out = out * dims
    if len(out) != dims:
        raise ValueError(f"{name}={value!r} does not match a {dims}-d convolution")
    if any(v < 1 for v in out):
        raise ValueError(f"{name}={value!r} must be positive")
    return out


def _frequency_grid(n_sub: Sequence[int], device: torch.device) -> Tensor:
    """Half-spectrum frequencies ``(F, dims)`` of an ``n_sub`` grid, row-major.

    The last axis keeps ``0 .. n//2`` (as ``rfftn`` does); the others keep all frequencies.
    """
    axes = [torch.arange(n, device=device) for n in n_sub[:-1]]
    axes.append(torch.arange(n_sub[-1] // 2 + 1, device=device))
    return torch.cartesian_prod(*axes).reshape(-1, len(n_sub))


def _kernel_taps(
    kernel: Sequence[int],
    n: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Polyphase coordinates of every kernel tap (row-major over the kernel).

    Tap ``q`` sits at ``j = dilation * q`` of the dilated kernel, wrapped circularly to
    ``j mod n``; with ``j mod n = stride * t + a`` it belongs to phase ``a`` at position ``t`` of
    the ``n / stride`` grid. Returns ``t (K, dims)`` and the flat phase index ``(K,)``.
    """
    taps = torch.cartesian_prod(*[torch.arange(k, device=device) for k in kernel])
    taps = taps.reshape(-1, len(kernel))
    positions, phase = [], torch.zeros_like(taps[:, 0])
    for axis, (ni, si, di) in enumerate(zip(n, stride, dilation, strict=True)):
        j = (di * taps[:, axis]) % ni
        positions.append(j // si)
        phase = phase * si + j % si
    return torch.stack(positions, dim=1), phase


def _fourier_matrix(
    freqs: Tensor,
    positions: Tensor,
    phases: Tensor,
    n_sub: Sequence[int],
    n_phases: int,
    dtype: torch.dtype,
) -> Tensor:
    """Real view ``(F, K, S * 2)`` of ``E[f, q, a] = exp(-2 pi i f.t_q / n') [phase(q) == a]``.

    ``f_i t_i`` is reduced modulo ``n'_i`` in exact integer arithmetic before the float64
    cos/sin, so the matrix is accurate for any grid size.
    """
    turns = torch.zeros(
        freqs.shape[0], positions.shape[0], device=freqs.device, dtype=torch.float64
    )
    for axis, ni in enumerate(n_sub):
        turns += ((freqs[:, None, axis] * positions[None, :, axis]) % ni).double() / ni
    angle = (2 * math.pi) * torch.remainder(turns, 1.0)
    wave = torch.stack((torch.cos(angle), -torch.sin(angle)), dim=-1)  # (F, K, 2)
    mask = phases[:, None] == torch.arange(n_phases, device=phases.device)  # (K, S)
    fourier = wave[:, :, None, :] * mask[None, :, :, None]
    return fourier.reshape(freqs.shape[0], positions.shape[0], 2 * n_phases).to(dtype)


def stacked_operator_svdvals(
    weights: Tensor,
    input_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    method: str = "auto",
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    max_batch_elems: int | None = None,
    finite_checked: bool = False,
) -> Tensor:
    """Operator singular values of ``L`` same-shape conv weights: ``(L, g * N' * min(d/g, c*S))``.

    See :func:`operator_svdvals`; ``weights`` is ``(L, d, c, *k)``; ``finite_checked``: skip
    the finite check (the caller made it).
    """
    chunk_elems = _chunk_elems(chunk_elems, max_batch_elems, stacklevel=3)
    weights = _check_stack(weights, groups, finite_checked)
    layers, d, c, *kernel = weights.shape
    dims = len(kernel)
    if dims == 0:  # a linear layer is a conv with a 0-d kernel on a 0-d input
        return _unfold_svdvals(weights, groups, method, chunk_elems)
    n = _ntuple(input_size, dims, "input_size")
    s = _ntuple(stride, dims, "stride")
    dil = _ntuple(dilation, dims, "dilation")
    for ni, si in zip(n, s, strict=True):
        if ni % si:
            raise ValueError(
                f"input_size {n} is not divisible by stride {s}: the circular strided "
                "operator (polyphase decomposition) needs every input dim divisible by its stride"
            )
    n_sub = tuple(ni // si for ni, si in zip(n, s, strict=True))
    n_phases = math.prod(s)
    dg = d // groups
    device = weights.device

    positions, phases = _kernel_taps(kernel, n, s, dil, device)
    freqs = _frequency_grid(n_sub, device)
    n_freq = freqs.shape[0]
    flat = weights.reshape(layers * d * c, -1)  # rows (l, o, ci), columns = taps

    per_freq = layers * d * c * n_phases
    step = max(1, int(chunk_elems) // per_freq)
    context = (
        f"operator of weight shape {_shape_str(weights.shape[1:])} on input {_shape_str(n)}, "
        f"stride {_shape_str(s)}, dilation {_shape_str(dil)}, groups {groups}"
    )
    parts = []
    for start in range(0, n_freq, step):
        chunk = freqs[start : start + step]
        fc = chunk.shape[0]
        fourier = _fourier_matrix(chunk, positions, phases, n_sub, n_phases, weights.dtype)
        # P[f, l, g][o, (ci, a)] = sum_q W[l, g*dg + o, ci, q] E[f, q, a]: one small matmul per
        # frequency whose output is already laid out as the (dg, c*S) complex blocks
        blocks = torch.matmul(flat, fourier).reshape(fc, layers, groups, dg, c, n_phases, 2)
        mats = torch.view_as_complex(blocks).reshape(fc * layers * groups, dg, c * n_phases)
        svals = _svdvals(mats, method, chunk_elems, context=context, checked=True)
        parts.append(svals.reshape(fc, layers, groups, -1))
    svals = torch.cat(parts) if len(parts) > 1 else parts[0]  # (F, L, g, r)
    # conjugate symmetry: P(-f) = conj(P(f)) has the same singular values, so the interior
    # frequencies of the last axis (1 .. ceil(n'/2) - 1) stand for two each
    last = n_sub[-1]
    rows = svals.reshape(n_freq // (last // 2 + 1), last // 2 + 1, layers, groups, -1)
    full = torch.cat((svals, rows[:, 1 : (last + 1) // 2].flatten(0, 1)))
    full = full.permute(1, 0, 2, 3)
    return torch.sort(full.reshape(layers, -1), dim=1, descending=True).values


def operator_svdvals(
    weight: Tensor,
    input_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    method: str = "auto",
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    max_batch_elems: int | None = None,
) -> Tensor:
    """Every singular value of the circular conv operator on an input of size ``input_size``.

    For a conv with circular padding, the map ``R^{c g x n} -> R^{d x n/s}`` (``n`` the spatial
    grid, 1-, 2- or 3-d) is block-diagonalised by the DFT (Sedghi, Gupta & Long 2019): its
    singular values are the union over the frequencies ``f`` of the ``n/s`` grid of those of

        P(f) = [ sum_q W[:, :, q] exp(-2 pi i f . t_q / (n/s)) [phase(q) == a] ]_a ,

    a ``d x (c * S)`` matrix, ``S = prod(stride)``: tap ``q`` of the dilated kernel sits at
    ``j = dilation * q mod n = stride * t_q + phase(q)`` (the polyphase split of a strided conv;
    a dilated kernel longer than ``n`` wraps around). Only the half spectrum is decomposed (last
    frequency axis ``0 .. n'/2``, as ``rfftn``): for a real kernel ``P(-f) = conj(P(f))``, so the
    interior frequencies are counted twice. The result is the exact multiset of
    ``g * prod(n/s) * min(d/g, c*S)`` values, descending; the largest is the circular map's
    Lipschitz constant. The DFT is evaluated only on the kernel's ``prod(k)`` taps, as a batch
    of small matmuls per chunk of frequencies, so the memory is bounded by ``chunk_elems``
    (an FFT of the padded kernel would materialise every frequency at once).

    Args:
        weight: ``(d, c, *k)`` conv weight; a linear weight ``(d, c)`` gives its own spectrum.
            For a transposed conv pass its weight ``(in, out/g, *k)`` unchanged: the transposed
            conv is the adjoint of the conv with this weight, with the same singular values.
        input_size: spatial size of the conv's input (from a forward hook: the real size, not
            a constant). For a transposed conv pass the adjoint conv's input size, i.e. the
            transposed conv's *output* size.
        stride, dilation: int or per-axis tuple; every input dim must be divisible by its
            stride.
        groups: the operator is block diagonal over groups; the result is the union.
        method: passed to :func:`batched_svdvals`.
        chunk_elems: bound on complex matrix elements assembled and decomposed at once (the
            ``chunk_elems`` of the other modes and of ``AnalysisConfig``).
        max_batch_elems: deprecated name of ``chunk_elems`` (``DeprecationWarning``).

    The spectrum is that of the circular map; with zero padding (the usual layer) it is an
    approximation that improves with the input size.

    Raises:
        ValueError: an input dim not divisible by its stride, or bad shapes.
        NonFiniteWeightError, SpectralError: see the module docstring.
    """
    return stacked_operator_svdvals(
        weight.unsqueeze(0),
        input_size,
        stride,
        dilation,
        groups,
        method=method,
        chunk_elems=_chunk_elems(chunk_elems, max_batch_elems, stacklevel=3),
    )[0]


def _chunk_elems(chunk_elems: int, max_batch_elems: int | None, stacklevel: int) -> int:
    """``chunk_elems``, or the deprecated ``max_batch_elems`` when that is given (warning at the
    caller's line, ``stacklevel`` counted as in :func:`warnings.warn` from this function)."""
    if max_batch_elems is None:
        return chunk_elems
    if chunk_elems != DEFAULT_CHUNK_ELEMS:
        raise TypeError("got both 'chunk_elems' and its deprecated name 'max_batch_elems'; "
                        "pass 'chunk_elems' only")
    warnings.warn("operator_svdvals(max_batch_elems=...) is deprecated; use chunk_elems=...",
                  DeprecationWarning, stacklevel=stacklevel)
    return max_batch_elems
