"""The conv modes as objects: how a weight becomes the matrices whose singular values are
computed, and what that needs.

A :class:`ModeSpec` knows, for one layer's geometry (:class:`Geometry`: weight shape, groups,
stride, dilation, input size), the shape (N, M) of one analysed matrix, the rows of the stored
weight in it (``per_row``'s N), the geometry that lets layers share one batched call, the
batched spectrum function, why it cannot analyse the layer, and the relative cost of doing so.
:data:`MODES` holds the three conv modes by name (docs/conventions.md#conv-modes); a layer
without conv geometry (linear, embedding, attention blocks) has the same single matrix in every
mode, :data:`PLAIN`; :func:`mode_for` picks between them. The analysis, the work split, the alert
rules and the tag descriptions read these fields instead of branching on a mode's name.

Adding a mode: its batched spectrum function in a module of this package, one
:class:`ModeSpec` subclass registered in :data:`MODES`, its name in the ``ConvMode`` literal of
:mod:`svd_callback.config` (a type checker needs it spelled out; a test holds the two equal) and
its section in docs/conventions.md (the list in docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from svd_callback.spectra.operator import stacked_operator_svdvals
from svd_callback.spectra.slices import stacked_slice_svdvals
from svd_callback.spectra.unfold import stacked_unfold_svdvals

__all__ = ["MODES", "PLAIN", "Geometry", "ModeSpec", "Skip", "conv_mode", "mode_for"]

Spectrum = Callable[[Tensor], Tensor]
"""A batched spectrum function: ``(L, *weight_shape)`` weights -> ``(L, n)`` singular values."""
Skip = tuple[str, str]
"""(reason code, reason) of a layer a mode cannot analyse."""
DEFAULT_COST_SIZE = 8
"""The input size per dimension assumed by :meth:`ModeSpec.cost` before the real one is known."""


class Geometry(Protocol):
    """What a mode reads of a layer (:class:`~svd_callback.layers.LayerSpec` has it)."""

    weight_shape: tuple[int, ...]
    groups: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    input_size: tuple[int, ...] | None


def kernel_volume(layer: Geometry) -> int:
    """``prod(k)`` of a ``(d, c, *k)`` weight (1 for a matrix)."""
    return math.prod(layer.weight_shape[2:])


@dataclass(frozen=True)
class ModeSpec:
    """One way of reading a weight as matrices.

    Attributes:
        name: the mode's name (``conv_mode=``, each record's ``mode``).
        text: what it computes, with its source (the tags' descriptions).
        weight_matrix: its ESD is that of the weight matrix itself (the matrices Martin &
            Mahoney's alpha scale was calibrated on).
        needs_input_size: it needs each conv's spatial input size (probed once).
    """

    name: str
    text: str
    weight_matrix: bool = True
    needs_input_size: bool = False

    def rows_cols(self, layer: Geometry) -> tuple[int, int]:
        """(rows, columns) of one analysed matrix."""
        raise NotImplementedError

    def matrix_shape(self, layer: Geometry) -> tuple[int, int]:
        """(N, M), N >= M, of one analysed matrix (Marchenko-Pastur's Q = N / M)."""
        rows, cols = self.rows_cols(layer)
        return max(rows, cols), min(rows, cols)

    def weight_rows(self, layer: Geometry) -> int:
        """Rows of the stored weight in one analysed matrix (``per_row``'s N,
        DeepDataProfiler's ``len(W.flatten(1))``)."""
        return layer.weight_shape[0]

    def batch_key(self, layer: Geometry) -> tuple:
        """The geometry that layers decomposed in one batched call share (besides kind, weight
        shape, device and dtype)."""
        return (layer.groups,)

    def spectrum(self, layer: Geometry, method: str, chunk_elems: int) -> Spectrum:
        """The batched solver of this mode for layers of ``layer``'s batch key; the weights
        reaching it were proved finite by the caller (the solver's own check is skipped)."""
        raise NotImplementedError

    def skip(self, layer: Geometry, probe_error: str | None = None) -> Skip | None:
        """Why this mode cannot analyse ``layer`` (``probe_error``: why its input size could
        not be recorded), else None."""
        return None

    def input_size(self, layer: Geometry) -> tuple[int, ...] | None:
        """The input size the analysis used (recorded on the layer's report), else None."""
        return None

    def cost(self, layer: Geometry) -> float:
        """Relative cost (flops of the dense SVDs) of the layer in this mode, for the work
        split over ranks; only ratios matter."""
        raise NotImplementedError

    def reading(self, is_conv: bool) -> ModeSpec:
        """How this mode reads a layer: itself for a convolution, :data:`PLAIN` for any other
        layer (its one matrix, the same in every mode)."""
        return self if is_conv else PLAIN


class _Unfold(ModeSpec):
    def rows_cols(self, layer: Geometry) -> tuple[int, int]:
        d, c = layer.weight_shape[:2]
        return d // layer.groups, c * kernel_volume(layer)

    def weight_rows(self, layer: Geometry) -> int:
        return layer.weight_shape[0] // layer.groups  # one group's block

    def spectrum(self, layer: Geometry, method: str, chunk_elems: int) -> Spectrum:
        groups = layer.groups
        return lambda w: stacked_unfold_svdvals(w, groups=groups, method=method,
                                                chunk_elems=chunk_elems, finite_checked=True)

    def cost(self, layer: Geometry) -> float:
        rows, cols = self.rows_cols(layer)
        return float(layer.groups * rows * cols * min(rows, cols))


class _Plain(_Unfold):
    """A matrix weight, the same in every mode (the unfold of a 0-d kernel, one group)."""


class _Slices(ModeSpec):
    def rows_cols(self, layer: Geometry) -> tuple[int, int]:
        d, c = layer.weight_shape[:2]
        return d, c

    def spectrum(self, layer: Geometry, method: str, chunk_elems: int) -> Spectrum:
        return lambda w: stacked_slice_svdvals(w, method=method, chunk_elems=chunk_elems,
                                               finite_checked=True)

    def cost(self, layer: Geometry) -> float:
        d, c = layer.weight_shape[:2]
        return float(kernel_volume(layer) * d * c * min(d, c))


class _Operator(ModeSpec):
    def rows_cols(self, layer: Geometry) -> tuple[int, int]:
        d, c = layer.weight_shape[:2]
        return d // layer.groups, c * math.prod(layer.stride)  # one frequency block per group

    def weight_rows(self, layer: Geometry) -> int:
        return layer.weight_shape[0] // layer.groups

    def batch_key(self, layer: Geometry) -> tuple:
        return (layer.groups, layer.stride, layer.dilation, layer.input_size)

    def spectrum(self, layer: Geometry, method: str, chunk_elems: int) -> Spectrum:
        size, stride, dilation = layer.input_size, layer.stride, layer.dilation
        groups = layer.groups
        return lambda w: stacked_operator_svdvals(
            w, size, stride=stride, dilation=dilation, groups=groups, method=method,
            chunk_elems=chunk_elems, finite_checked=True,
        )

    def skip(self, layer: Geometry, probe_error: str | None = None) -> Skip | None:
        size = layer.input_size
        if size is None:
            return "input_size_missing", probe_error or (
                "operator mode needs the layer's input size: pass input_size=, example_input= "
                "or input_sizes=")
        if any(n % s for n, s in zip(size, layer.stride, strict=True)):
            return "input_size_stride", (f"operator mode needs input size {size} "
                                         f"divisible by stride {layer.stride}")
        return None

    def input_size(self, layer: Geometry) -> tuple[int, ...] | None:
        return layer.input_size

    def cost(self, layer: Geometry) -> float:
        d, c, *kernel = layer.weight_shape
        size = layer.input_size or (DEFAULT_COST_SIZE,) * len(kernel)
        stride = layer.stride or (1,) * len(kernel)
        freqs = math.prod(max(1, n // s) for n, s in zip(size, stride, strict=False))
        rows, cols = d // layer.groups, c * math.prod(stride)
        return float(freqs * layer.groups * rows * cols * min(rows, cols))


UNFOLD = _Unfold(
    "unfold",
    "conv mode unfold (the conv weight reshaped to out_channels x (in_channels kh kw), kh x kw "
    "the kernel size; Praggastis et al. 2022)",
)
OPERATOR = _Operator(
    "operator",
    "conv mode operator (exact spectrum of the circular conv operator on the layer's real "
    "input size, Sedghi et al. 2019)",
    weight_matrix=False,  # every frequency's matrix together: n^2 times the eigenvalues
    needs_input_size=True,
)
SLICES = _Slices(
    "slices",
    "conv mode slices (WeightWatcher's kh x kw kernel-position slices W[:, :, i, j] of "
    "out_channels x in_channels each, their spectra pooled)",
)
PLAIN = _Plain("plain", "the weight matrix itself (a layer without conv geometry)")
"""How every mode reads a layer without conv geometry: its one matrix."""

MODES: dict[str, ModeSpec] = {m.name: m for m in (UNFOLD, OPERATOR, SLICES)}
"""The conv modes by name, in the order of ``svd_callback.config.CONV_MODES``."""


def conv_mode(name: str) -> ModeSpec:
    """The conv mode ``name``.

    Raises:
        ValueError: an unknown name (the valid ones listed).
    """
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown conv mode {name!r}; expected one of {tuple(MODES)}") from None


def mode_for(name: str, is_conv: bool) -> ModeSpec:
    """How mode ``name`` reads a layer (:meth:`ModeSpec.reading`)."""
    return conv_mode(name).reading(is_conv)
