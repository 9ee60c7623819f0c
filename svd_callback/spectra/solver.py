"""Singular values of conv and linear weights in three conventions (RESEARCH.md section 1).

A conv weight has shape ``(d, c, *k)`` = (out channels, in channels / groups, kernel), with
``len(k)`` = 1, 2 or 3; a linear weight is the case ``k = ()``. A transposed conv weight has
shape ``(in, out / groups, *k)``: it is passed unchanged, because a transposed conv is the
adjoint of the conv that has the same weight tensor, and a map and its adjoint have the same
singular values.

- ``unfold`` (Praggastis et al. 2022): the im2col matrix ``W.reshape(d, c * prod(k))`` of each
  group. :func:`unfold_svd`, :func:`unfold_svdvals`, :func:`unfold_matrix`.
- ``operator`` (Sedghi, Gupta & Long, ICLR 2019): every singular value of the circular conv as a
  linear map on an input of a given spatial size. :func:`operator_svdvals`.
- ``slices`` (WeightWatcher): the ``prod(k)`` matrices ``W[:, :, i, j]`` pooled into one
  spectrum. :func:`slice_svdvals`, :func:`slice_matrices`.

Each mode has a ``stacked_*`` variant taking ``L`` weights of identical shape as one tensor
``(L, *shape)`` and decomposing them in one batched call; the single-layer functions are its
``L = 1`` case. Every singular-value computation goes through :func:`batched_svdvals`
(:func:`unfold_svd`, which also needs the vectors, calls ``torch.linalg.svd``).

Conventions shared by every function here:

- Computation happens on the weight's device, detached; float16 / bfloat16 weights are upcast to
  float32; float32 and float64 are kept. Singular values come back real, in that dtype,
  descending.
- Non-finite weights raise :class:`NonFiniteWeightError` (a ``ValueError`` whose message starts
  with ``"weight has NaN/Inf entries"``) before any decomposition; the check costs one host
  synchronisation per call. A solver that fails to converge on finite input (after one retry in
  float64) raises :class:`SpectralError` (a ``RuntimeError``) naming the matrix and weight shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from svd_callback.batch_parallel import map_batch

__all__ = [
    "DEFAULT_CHUNK_ELEMS",
    "GRAM32_NOISE",
    "SVD_METHODS",
    "NonFiniteWeightError",
    "SpectralError",
    "batched_svdvals",
    "operator_svdvals",
    "slice_matrices",
    "slice_svdvals",
    "stacked_operator_svdvals",
    "stacked_slice_matrices",
    "stacked_slice_svdvals",
    "stacked_unfold_matrices",
    "stacked_unfold_svd",
    "stacked_unfold_svdvals",
    "unfold_matrix",
    "unfold_svd",
    "unfold_svdvals",
]

DEFAULT_CHUNK_ELEMS = 1 << 22
"""Matrix elements handed to one solver call (and, in operator mode, assembled at once):
4M, i.e. 16 MB of float32 or 32 MB of complex64 input per chunk (the double-precision Gram
path holds about four times that at its peak)."""

SVD_METHODS = ("auto", "svd", "gram", "gram32")

GRAM32_NOISE = 64
"""Measured absolute error of ``"gram32"`` eigenvalues, in units of ``eps32 * lambda_max``:
at most ~45 on ResNet-18's 512 x 512 slices, ~10 on 128 x 128 ones (float64 reference)."""


class SpectralError(RuntimeError):
    """A singular value / eigenvalue solver failed to converge on finite input."""


class NonFiniteWeightError(ValueError):
    """The weight (or one weight of a stack) has NaN or Inf entries.

    Attributes:
        layers: indices, within the stack, of the weights with non-finite entries
            (``[0]`` for a single weight).
    """

    def __init__(self, message: str, layers: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.layers = list(layers)


# --------------------------------------------------------------------------------------------
# dtype / validation helpers


def _compute(tensor: Tensor) -> Tensor:
    """Detached copy-free view in the compute dtype (half/bf16 -> float32, chalf -> complex64)."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    if tensor.dtype == torch.complex32:
        return tensor.to(torch.complex64)
    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"expected a floating-point tensor, got dtype {tensor.dtype}")
    return tensor


def _check_finite(tensor: Tensor, what: str = "weight", stacked: bool = False) -> None:
    """Raise :class:`NonFiniteWeightError` if any entry is NaN/Inf (one host sync).

    Fast path: NaN and Inf propagate through a sum, so a finite sum proves every entry finite.
    Only a non-finite sum (bad entries, or a finite sum overflowing) pays the exact check.
    """
    if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum())):
        return
    finite = torch.isfinite(tensor)
    if stacked:
        bad = ~finite.reshape(finite.shape[0], -1).all(dim=1)
        if bool(bad.any()):
            layers = bad.nonzero().flatten().tolist()
            raise NonFiniteWeightError(
                f"{what} has NaN/Inf entries (stack indices {layers})", layers
            )
    elif not bool(finite.all()):
        raise NonFiniteWeightError(f"{what} has NaN/Inf entries", [0])


def _check_stack(weights: Tensor, groups: int = 1) -> Tensor:
    """Validate a stack ``(L, d, c, *k)`` of weights; return it in the compute dtype."""
    weights = _compute(weights)
    if weights.is_complex():
        raise TypeError("weights must be real")
    if weights.dim() < 3 or weights.dim() > 6:
        raise ValueError(
            "expected a stack of linear or conv weights of shape (L, d, c, *kernel) with "
            f"0 to 3 kernel dims, got shape {tuple(weights.shape)}"
        )
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if weights.shape[1] % groups:
        raise ValueError(
            f"groups={groups} does not divide the first weight dim {weights.shape[1]} "
            f"(weight shape {tuple(weights.shape[1:])})"
        )
    _check_finite(weights, stacked=True)
    return weights


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


def _shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


# --------------------------------------------------------------------------------------------
# the one place that calls the LAPACK / cuSOLVER routines


def _resolve_method(method: str, mats: Tensor) -> str:
    if method not in SVD_METHODS:
        raise ValueError(f"method must be one of {SVD_METHODS}, got {method!r}")
    if method != "auto":
        return method
    # measured on CPU (RESEARCH.md section 4 machine): the double Gram path beats float32 SVD by
    # 1.35-1.5x on square real matrices and 4-15x on 1:9 ones, but complex128 Gram + eigvalsh is
    # 0.7-1.3x of complex64 SVD, so complex (operator) blocks keep the SVD
    real_single = mats.dtype == torch.float32
    return "gram" if real_single and mats.device.type != "mps" else "svd"


def _gram_svdvals(mats: Tensor) -> Tensor:
    """sigma = sqrt(eigvalsh(smaller Gram matrix)) with the Gram formed in double precision."""
    wide = torch.complex128 if mats.is_complex() else torch.float64
    real = torch.float32 if mats.dtype in (torch.float32, torch.complex64) else torch.float64
    return _without_structural_zeros(
        mats, lambda x: _gram_eigs(x.to(wide)).clamp_min(0).sqrt().flip(-1).to(real)
    )


def _gram32_svdvals(mats: Tensor) -> Tensor:
    """sigma = sqrt(|eigvalsh(G)|) of the smaller Gram matrix formed and solved in the input's
    (single) precision.

    Every eigenvalue carries an absolute error of up to ``GRAM32_NOISE * eps32 * lambda_max``;
    one that comes out below that noise (even negative) is kept at its magnitude, i.e. treated
    as small but not zero, which is the generic case (a zero singular value that is not
    structural cannot be told apart at this precision).
    """
    return _without_structural_zeros(mats, lambda x: _gram_eigs(x).abs().sqrt().flip(-1))


def _gram_eigs(mats: Tensor) -> Tensor:
    gram = mats.mH @ mats if mats.shape[-2] >= mats.shape[-1] else mats @ mats.mH
    return map_batch(torch.linalg.eigvalsh, gram)


def _without_structural_zeros(mats: Tensor, solve) -> Tensor:
    """``solve`` on each matrix with its all-zero rows and columns removed, exact zeros after.

    ``sigma(X)`` is ``sigma(X')`` of the matrix without its zero rows and columns plus
    ``min(m, n) - min(m', n')`` exact zeros, so dead units give exact zero singular values
    instead of Gram round-off; matrices without such rows or columns are solved as one batch.
    """
    # a sum of magnitudes is zero exactly when every term is (NaN and Inf stay non-zero);
    # one abs() and two contiguous sums cost a seventh of two inf-norm reductions
    magnitudes = mats.abs()
    zero_rows = magnitudes.sum(dim=-1) == 0
    zero_cols = magnitudes.sum(dim=-2) == 0
    del magnitudes
    structural = (zero_rows.any(dim=-1) | zero_cols.any(dim=-1)).tolist()
    if not any(structural):
        return solve(mats)
    plain = [i for i, flag in enumerate(structural) if not flag]
    out = None
    if plain:
        out_plain = solve(mats[plain])
        out = out_plain.new_zeros((mats.shape[0], out_plain.shape[-1]))
        out[plain] = out_plain
    for i in (i for i, flag in enumerate(structural) if flag):
        dense = mats[i][~zero_rows[i]][:, ~zero_cols[i]]
        svals = solve(dense.unsqueeze(0))[0] if dense.numel() else None
        if out is None:
            dtype = svals.dtype if svals is not None else mats.real.dtype
            out = torch.zeros((mats.shape[0], min(mats.shape[-2:])), dtype=dtype,
                              device=mats.device)
        if svals is not None:
            out[i, : svals.numel()] = svals
    return out


def _solve(mats: Tensor, method: str) -> Tensor:
    if method == "gram":
        return _gram_svdvals(mats)
    if method == "gram32":
        return _gram32_svdvals(mats)
    return map_batch(torch.linalg.svdvals, mats)


def _svdvals(
    mats: Tensor, method: str, chunk_elems: int, context: str = "", checked: bool = False
) -> Tensor:
    """:func:`batched_svdvals` on a validated (B, m, n) tensor in the compute dtype."""
    mats = _compute(mats)
    batch, m, n = mats.shape
    real = torch.float32 if mats.dtype in (torch.float32, torch.complex64) else torch.float64
    if batch == 0 or m == 0 or n == 0:
        return mats.new_zeros((batch, min(m, n)), dtype=real)
    if not checked:
        _check_finite(mats, what="matrix batch")
    method = _resolve_method(method, mats)
    step = max(1, int(chunk_elems) // (m * n))
    out = []
    for start in range(0, batch, step):
        chunk = mats[start : start + step]
        try:
            out.append(_solve(chunk, method))
        except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
            wide = torch.complex128 if chunk.is_complex() else torch.float64
            try:
                out.append(torch.linalg.svdvals(chunk.to(wide)).to(real))
            except RuntimeError as err64:
                where = f" ({context})" if context else ""
                raise SpectralError(
                    f"singular values of a batch of {chunk.shape[0]} matrices of shape "
                    f"{_shape_str((m, n))}{where} failed to converge, also in float64: {err}"
                ) from err64
    return out[0] if len(out) == 1 else torch.cat(out)


def batched_svdvals(
    mats: Tensor, method: str = "auto", chunk_elems: int = DEFAULT_CHUNK_ELEMS
) -> Tensor:
    """Singular values of a batch of matrices, descending, shape ``(*batch, min(m, n))``.

    Args:
        mats: ``(*batch, m, n)``, real or complex; half precision is upcast.
        method: ``"svd"``: ``torch.linalg.svdvals``. ``"gram"``: ``sqrt(eigvalsh(G))`` of the
            smaller Gram matrix ``G = X^H X`` or ``X X^H``, formed and solved in double
            precision (float64 / complex128), cast back. ``"auto"``: ``"gram"`` for float32
            input on devices with float64 (not MPS), where it is as accurate and faster
            (measured 1.35-1.5x on square and 4-15x on 1:9 matrices, CPU); ``"svd"`` for complex
            input (a complex128 Gram is not faster than complex64 SVD) and for float64 input.
            ``"gram32"``: the same Gram path in the input's own precision (float32), the fastest
            exact-arithmetic route (the bare floor: ``eigvalsh`` of the float32 Gram), at lower
            accuracy for small values, see below.
        chunk_elems: at most this many input elements per solver call (at least one matrix).

    Accuracy of ``"gram"``: the Gram of float32 entries is formed almost exactly in float64
    (products of float32 are exact in float64), and eigvalsh's absolute error on
    ``lambda = sigma^2`` is ~ eps64 * sigma_max^2, so sigma_i is off by about
    ``eps64 * sigma_max^2 / sigma_i`` (at most ~ sqrt(eps64) sigma_max = 1.5e-8 sigma_max for
    sigma_i -> 0): never worse than float32 SVD (~ eps32 * sigma_max = 6e-8 sigma_max). A float32
    Gram would lose the small values (error ~ sqrt(eps32) sigma_max = 3.5e-4 sigma_max), which is
    why the Gram is formed in double. For float64 input the Gram would lose accuracy against a
    float64 SVD, hence ``"auto"`` keeps ``"svd"`` there.

    Both Gram paths remove exactly-zero rows and columns (dead units) first and return exact
    zero singular values for them, as an SVD would.

    Accuracy of ``"gram32"``: every eigenvalue ``lambda = sigma^2`` is within
    ``GRAM32_NOISE * eps32 * lambda_max`` (~8e-6 lambda_max) of the truth, which leaves every
    ESD statistic of the power-law tail, the norms, stable rank and entropy unchanged to ~1e-6
    relative, but singular values below ~3e-3 sigma_max are not resolved: they are returned as
    ``sqrt(|computed lambda|)``, never as zero, so a rank counted on these values sees
    structural rank loss (zero rows or columns) but not a deficiency that is only numerical.

    Raises:
        NonFiniteWeightError: ``mats`` has NaN/Inf entries.
        SpectralError: the solver failed on a chunk, also when retried with float64 SVD.
    """
    mats = _compute(mats)
    if mats.dim() < 2:
        raise ValueError(f"expected (*batch, m, n) matrices, got shape {tuple(mats.shape)}")
    lead, (m, n) = mats.shape[:-2], mats.shape[-2:]
    flat = mats.reshape(-1, m, n)
    return _svdvals(flat, method, chunk_elems).reshape(*lead, min(m, n))


def _stack_svdvals(
    mats: Tensor, layers: int, weight_shape: Sequence[int], method: str, chunk_elems: int
) -> Tensor:
    """Pool the singular values of ``mats`` (L * batch, m, n) per layer: (L, batch * r)."""
    context = f"weight shape {_shape_str(weight_shape)}"
    svals = _svdvals(mats, method, chunk_elems, context=context, checked=True)
    pooled = svals.reshape(layers, -1)
    if mats.shape[0] == layers:  # one matrix per layer: already descending
        return pooled
    return torch.sort(pooled, dim=1, descending=True).values


# --------------------------------------------------------------------------------------------
# unfold mode


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
) -> Tensor:
    """Pooled unfold singular values of ``L`` same-shape weights: ``(L, g * min(d/g, c*K))``."""
    return _unfold_svdvals(_check_stack(weights, groups), groups, method, chunk_elems)


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


# --------------------------------------------------------------------------------------------
# slices mode (WeightWatcher)


def stacked_slice_matrices(weights: Tensor) -> Tensor:
    """Kernel slices of a stack: ``(L, d, c, *k) -> (L, prod(k), N, M)`` with ``N >= M``.

    Slice ``q`` (row-major over the kernel positions) is ``W[:, :, i, j, ...]``, transposed
    when ``d < c``. A linear weight gives its one matrix.
    """
    weights = _check_stack(weights)
    layers, d, c = weights.shape[:3]
    slices = weights.reshape(layers, d, c, -1).permute(0, 3, 1, 2)
    return slices.mT if d < c else slices


def slice_matrices(weight: Tensor) -> Tensor:
    """WeightWatcher's conv slices ``W[:, :, i, j]`` (``N >= M``): ``(prod(k), N, M)``."""
    return stacked_slice_matrices(weight.unsqueeze(0))[0]


def stacked_slice_svdvals(
    weights: Tensor, *, method: str = "auto", chunk_elems: int = DEFAULT_CHUNK_ELEMS
) -> Tensor:
    """Pooled slice singular values of ``L`` same-shape weights: ``(L, prod(k) * M)``."""
    mats = stacked_slice_matrices(weights)
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


# --------------------------------------------------------------------------------------------
# operator mode (Sedghi et al. 2019)


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
    max_batch_elems: int = DEFAULT_CHUNK_ELEMS,
) -> Tensor:
    """Operator singular values of ``L`` same-shape conv weights: ``(L, g * N' * min(d/g, c*S))``.

    See :func:`operator_svdvals`; ``weights`` is ``(L, d, c, *k)``.
    """
    weights = _check_stack(weights, groups)
    layers, d, c, *kernel = weights.shape
    dims = len(kernel)
    if dims == 0:  # a linear layer is a conv with a 0-d kernel on a 0-d input
        return _unfold_svdvals(weights, groups, method, max_batch_elems)
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
    step = max(1, int(max_batch_elems) // per_freq)
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
        svals = _svdvals(mats, method, max_batch_elems, context=context, checked=True)
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
    max_batch_elems: int = DEFAULT_CHUNK_ELEMS,
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
    of small matmuls per chunk of frequencies, so the memory is bounded by ``max_batch_elems``
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
        max_batch_elems: bound on complex matrix elements assembled and decomposed at once.

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
        max_batch_elems=max_batch_elems,
    )[0]
