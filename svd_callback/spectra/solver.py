"""The batched singular-value machinery shared by the three conv modes.

:func:`batched_svdvals` is the one place that calls the LAPACK / cuSOLVER routines
(``svdvals`` or ``eigvalsh`` of a Gram matrix, chosen by ``method``); the helpers here convert
dtypes, validate weight stacks and check finiteness. Conventions: see :mod:`svd_callback.spectra`.
"""

from __future__ import annotations

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
    "auto_method",
    "batched_svdvals",
]

DEFAULT_CHUNK_ELEMS = 1 << 22
"""Matrix elements handed to one solver call (and, in operator mode, assembled at once):
4M, i.e. 16 MB of float32 or 32 MB of complex64 input per chunk (the double-precision Gram
path holds about four times that at its peak)."""

SVD_METHODS = ("auto", "svd", "gram", "gram32")

GRAM32_NOISE = 64
"""Bound on the absolute error of ``"gram32"`` eigenvalues, in units of ``eps32 * lambda_max``,
above the largest error measured against a float64 reference
(docs/methods.md#measurements-behind-the-choices)."""


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


def _check_stack(weights: Tensor, groups: int = 1, finite_checked: bool = False) -> Tensor:
    """Validate a stack ``(L, d, c, *k)`` of weights; return it in the compute dtype.

    ``finite_checked``: the caller has proved the weights finite already (the analysis checks
    every weight with one host transfer), so the per-stack finite check and its host
    synchronisation are skipped."""
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
    if not finite_checked:
        _check_finite(weights, stacked=True)
    return weights


def _shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


# --------------------------------------------------------------------------------------------
# the one place that calls the LAPACK / cuSOLVER routines


def _resolve_method(method: str, mats: Tensor) -> str:
    if method not in SVD_METHODS:
        raise ValueError(f"method must be one of {SVD_METHODS}, got {method!r}")
    if method != "auto":
        return method
    return auto_method(mats.dtype, mats.device.type)


def auto_method(dtype: torch.dtype, device_type: str) -> str:
    """The solver ``"auto"`` picks for matrices of ``dtype`` on a ``device_type`` device.

    ``"gram"`` (float64 Gram) for float32 on the CPU, where it is faster than a float32 SVD.
    ``"svd"`` elsewhere: complex input (a complex128 Gram is not faster than a complex64 SVD),
    float64 input (a Gram would lose accuracy against a float64 SVD), and every accelerator
    (CUDA, MPS, XPU ...), whose float64 runs at a fraction of float32 speed (MPS has none):
    there float32 ``svdvals``, whose error is ~ eps32 * sigma_max (see :func:`batched_svdvals`).
    The timings behind the choice: docs/methods.md#measurements-behind-the-choices.
    """
    return "gram" if dtype == torch.float32 and device_type == "cpu" else "svd"


def _gram_svdvals(mats: Tensor) -> Tensor:
    """sigma = sqrt(eigvalsh(smaller Gram matrix)) with the Gram formed in double precision."""
    wide = torch.complex128 if mats.is_complex() else torch.float64
    real = torch.float32 if mats.dtype in (torch.float32, torch.complex64) else torch.float64
    return _without_structural_zeros(
        mats, lambda x: _eigs(_wide_gram(x, wide)).clamp_min(0).sqrt().flip(-1).to(real)
    )


GRAM_BLOCK_ELEMS = 1 << 22
"""Input elements widened to double at once while a double Gram is formed (32 MiB of float64)."""


def _wide_gram(mats: Tensor, wide: torch.dtype) -> Tensor:
    """The smaller Gram matrix of ``mats`` in ``wide`` precision, summed over blocks of the long
    side (``X^H X = sum_b X_b^H X_b`` over row blocks ``X_b``), so that no double copy of the
    whole input exists: the extra memory is the Gram plus one widened block."""
    tall = mats.shape[-2] >= mats.shape[-1]
    x = mats if tall else mats.mH  # the Gram of the short side is x^H x
    batch, length, short = x.shape[0], x.shape[-2], x.shape[-1]
    step = max(1, GRAM_BLOCK_ELEMS // max(1, batch * short))
    gram = None
    for start in range(0, length, step):
        block = x[:, start:start + step].to(wide)
        part = block.mH @ block
        gram = part if gram is None else gram.add_(part)
        del block, part
    if gram is None:
        return x.new_zeros((batch, short, short), dtype=wide)
    return gram  # x^H x: X^H X when tall, X X^H when wide (x = X^H)


def _eigs(gram: Tensor) -> Tensor:
    return map_batch(torch.linalg.eigvalsh, gram)


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
            input on the CPU, where it is as accurate and faster; ``"svd"`` for complex input,
            for float64 input, and on every accelerator, see :func:`auto_method`.
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
