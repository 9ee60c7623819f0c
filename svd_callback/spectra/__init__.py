"""Singular values of conv and linear weights in three conventions (see docs/methods.md, "Spectra").

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

Modules: :mod:`~svd_callback.spectra.solver` (the batched solver, dtype and finiteness checks),
:mod:`~svd_callback.spectra.unfold`, :mod:`~svd_callback.spectra.slices`,
:mod:`~svd_callback.spectra.operator` (one per mode), :mod:`~svd_callback.spectra.modes` (each
mode as a :class:`ModeSpec` object: matrix shape, rows, batching, spectrum, skip reasons, cost).
"""

from svd_callback.spectra.modes import MODES, PLAIN, ModeSpec, conv_mode, mode_for
from svd_callback.spectra.operator import operator_svdvals, stacked_operator_svdvals
from svd_callback.spectra.slices import (
    slice_matrices,
    slice_svdvals,
    stacked_slice_matrices,
    stacked_slice_svdvals,
)
from svd_callback.spectra.solver import (
    DEFAULT_CHUNK_ELEMS,
    GRAM32_NOISE,
    SVD_METHODS,
    NonFiniteWeightError,
    SpectralError,
    batched_svdvals,
)
from svd_callback.spectra.unfold import (
    stacked_unfold_matrices,
    stacked_unfold_svd,
    stacked_unfold_svdvals,
    unfold_matrix,
    unfold_svd,
    unfold_svdvals,
)

__all__ = [
    "DEFAULT_CHUNK_ELEMS",
    "GRAM32_NOISE",
    "MODES",
    "PLAIN",
    "SVD_METHODS",
    "ModeSpec",
    "NonFiniteWeightError",
    "SpectralError",
    "batched_svdvals",
    "conv_mode",
    "mode_for",
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
