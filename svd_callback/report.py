"""Per-layer analysis records and the report that holds them.

A :class:`LayerReport` is one layer analysed in one conv mode: its spectrum (singular values,
descending), the metrics computed from it, and how they were made (mode, normalisation, fit
method). A layer that could not be analysed keeps a ``reason`` and no spectrum. A
:class:`Report` is the list of them from one ``analyze()`` call, with the class statistics of
the same call in its field ``classes``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from svd_callback.classes.report import ClassReport
from svd_callback.config import CONV_MODES, NORMALIZATIONS
from svd_callback.layers import is_conv_kind
from svd_callback.rmt.mp import random_stable_rank

# CONV_MODES: the three conv SVD conventions (docs/conventions.md#conv-modes); NORMALIZATIONS:
# ``raw`` lambda = sigma^2, ``ww`` WeightWatcher 0.7.7 (conv weights scaled by 1/sqrt(2), so
# lambda = sigma^2 / 2 for convs), ``per_row`` DeepDataProfiler's lambda = sigma^2 / N (N = the
# weight's rows per analysed matrix, ``LayerReport.rows``). Both are defined once, by the Literal
# types of svd_callback.config.

__all__ = ["CONV_MODES", "INPUT_SIZE_CODES", "NORMALIZATIONS", "REASON_CODES", "LayerReport",
           "Report", "eig_scale"]

REASON_CODES: dict[str, str] = {
    "unsupported_module": "the module holds a weight this package does not read as a matrix "
                          "(no weight tensor, a weight that is not a matrix, another kind)",
    "lazy_module": "a lazy module not materialised yet",
    "embeddings_off": "an embedding, with embeddings=False",
    "tied_weight": "the weight is shared with an earlier layer, analysed there",
    "meta_weight": "the weight is on the meta device (shapes only)",
    "nonfinite_weight": "the weight holds NaN or Inf",
    "empty_weight": "the analysed matrix has no rows or no columns",
    "ww_size_limit": "outside WeightWatcher 0.7.7's size limits (ww_compat=True)",
    "input_size_missing": "operator mode without the conv's input size (none given, or the "
                          "probe forward pass that records it failed)",
    "input_size_stride": "operator mode with an input size not divisible by the conv's stride",
    "svd_failed": "the singular value solver raised",
    "analysis_failed": "the whole analysis of the rank failed (the callback's runner)",
}
"""The machine-readable ``LayerReport.reason_code`` values and what each means; ``reason``
keeps the human-readable text (with the numbers of the case)."""

INPUT_SIZE_CODES = frozenset({"input_size_missing", "input_size_stride"})
"""The codes of a conv skipped in operator mode for its input size."""


@dataclass
class LayerReport:
    """One layer, one conv mode.

    Attributes:
        name: qualified module name (``model.named_modules()``).
        kind: ``linear``, ``conv1d`` ... ``conv3d``, ``conv_transpose1d`` ... ``conv_transpose3d``.
        mode: conv mode that produced the spectrum (``linear`` layers carry the requested mode too,
            so one chart per mode shows every layer).
        normalization: ESD convention, one of :data:`NORMALIZATIONS`.
        shape: weight shape.
        matrix_shape: (N, M) of the analysed matrix (N >= M), for Marchenko-Pastur's Q = N / M;
            for ``operator`` the per-frequency block, for ``slices`` one slice.
        input_size: spatial input size used by ``operator`` mode (None otherwise).
        rows: N of ``per_row`` (DeepDataProfiler's ``len(W.flatten(1))`` per group): the rows of
            the weight as PyTorch stores it in one analysed matrix, out_features for a linear
            layer, weight.shape[0] / groups for ``unfold`` and ``operator`` (one group's block),
            weight.shape[0] for ``slices`` (one whole kh x kw slice). None when unknown.
        svals: singular values, descending, float32, on the analysis device (None if skipped).
        metrics: metric name -> float (NaN where undefined; see ``notes``).
        quality: label from the alpha thresholds (``ok``, ``over-trained``, ``under-trained``,
            ``suspicious-fit``, ``undetermined``) or None when no fit was made.
        reason: why the layer was skipped (None when analysed).
        reason_code: the kind of ``reason``, one of :data:`REASON_CODES` (None when analysed).
        notes: per-metric reasons for NaN values and other remarks.
        normalized_by: qualified name of the BatchNorm/GroupNorm that normalises the layer's
            output (its output is then invariant to the weight's scale; see
            :mod:`svd_callback.normalizers`), None when none was detected.
    """

    name: str
    kind: str
    mode: str
    normalization: str = "raw"
    shape: tuple[int, ...] = ()
    matrix_shape: tuple[int, int] | None = None
    input_size: tuple[int, ...] | None = None
    rows: int | None = None
    svals: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    quality: str | None = None
    reason: str | None = None
    notes: dict[str, str] = field(default_factory=dict)
    normalized_by: str | None = None
    reason_code: str | None = None

    def __post_init__(self) -> None:
        if self.reason_code is not None and self.reason_code not in REASON_CODES:
            raise ValueError(f"unknown reason_code {self.reason_code!r}; expected one of "
                             f"{sorted(REASON_CODES)}")

    @property
    def skipped(self) -> bool:
        return self.reason is not None

    @property
    def eigenvalues(self) -> torch.Tensor | None:
        """lambda = sigma^2 under this record's normalisation (descending); None without a
        spectrum, or for ``per_row`` without ``rows``."""
        if self.svals is None or (self.normalization == "per_row" and self.rows is None):
            return None
        scale = eig_scale(self.kind, self.normalization, self.rows)
        return self.svals.double() ** 2 * scale

    def to_json(self) -> dict[str, Any]:
        """The record as JSON values, in the order of the history file's ``layer`` row
        (docs/conventions.md#history-file), which adds the analysis's context; the spectrum is
        left out (its length is ``n_svals``), as is ``rows``. Non-finite metrics stay floats
        here (the file writes them as ``null``)."""
        return {
            "layer": self.name,
            "kind": self.kind,
            "mode": self.mode,
            "normalization": self.normalization,
            "shape": list(self.shape),
            "matrix_shape": self.matrix_shape,
            "input_size": self.input_size,
            "n_svals": None if self.svals is None else int(self.svals.numel()),
            "metrics": dict(self.metrics),
            "quality": self.quality,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "notes": dict(self.notes),
            "normalized_by": self.normalized_by,
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> LayerReport:
        """The record of a :meth:`to_json` dict or a history file's ``layer`` row (``null``
        metrics read as NaN; no spectrum). Rows written before a field existed read it as its
        default."""
        def pair(value: Any) -> tuple[int, ...] | None:
            return tuple(int(v) for v in value) if value else None

        return cls(
            name=row["layer"], kind=row["kind"], mode=row["mode"],
            normalization=row.get("normalization", "raw"),
            shape=tuple(int(v) for v in row.get("shape") or ()),
            matrix_shape=pair(row.get("matrix_shape")),  # type: ignore[arg-type]
            input_size=pair(row.get("input_size")),
            metrics={str(k): math.nan if v is None else float(v)
                     for k, v in (row.get("metrics") or {}).items()},
            quality=row.get("quality"), reason=row.get("reason"),
            reason_code=row.get("reason_code") if row.get("reason_code") in REASON_CODES
            else None, notes=dict(row.get("notes") or {}),
            normalized_by=row.get("normalized_by"),
        )

    def as_row(self) -> dict[str, Any]:
        """The flat table view of :meth:`to_json` (a DataFrame row: shapes as ``8x1x3x3``,
        missing values as ``""``, one column per metric, ``rows`` added; no notes)."""
        data = self.to_json()

        def joined(value: Any) -> str:
            return "x".join(map(str, value)) if value else ""

        row: dict[str, Any] = {
            **{k: data[k] for k in ("layer", "kind", "mode", "normalization")},
            "shape": joined(data["shape"]),
            "matrix_shape": joined(data["matrix_shape"]),
            "input_size": joined(data["input_size"]),
            "rows": self.rows if self.rows is not None else "",
            "n_svals": data["n_svals"] or 0,
            **{k: data[k] or "" for k in ("quality", "reason", "reason_code")},
        }
        row.update({k: _as_float(v) for k, v in data["metrics"].items()})
        return row


def eig_scale(kind: str, normalization: str, rows: int | None = None) -> float:
    """Factor c in lambda = c * sigma^2 for a normalisation convention.

    ``raw``: c = 1. ``ww``: c = 1/2 for convs (WeightWatcher 0.7.7 scales conv weights by
    1/sqrt(2)), 1 otherwise. ``per_row``: c = 1 / rows, DeepDataProfiler 2.0.1's
    ``SpectralAnalysis.spectral_analysis`` (sigma^2 / ``len(W.flatten(1))``, the output
    channels of a conv, the out_features of a linear layer); ``rows`` is per analysed matrix
    (:attr:`LayerReport.rows`), so a grouped conv divides by out_channels / groups.

    Raises:
        ValueError: an unknown normalisation, or ``per_row`` without a positive ``rows``.
    """
    if normalization == "raw":
        return 1.0
    if normalization == "ww":
        return 0.5 if is_conv_kind(kind) else 1.0
    if normalization == "per_row":
        if rows is None or rows < 1:
            raise ValueError(f"per_row needs the rows of the analysed matrix, got {rows!r}")
        return 1.0 / rows
    raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Report(list[LayerReport]):
    """The records of one analysis: a list of :class:`LayerReport` (one per layer and conv mode),
    with table helpers, and the class statistics of the same analysis.

    Attributes:
        classes: the :class:`~svd_callback.classes.report.ClassReport` of ``analyze(...,
            probe=...)``, None when no class analysis ran. The filtered views (:meth:`analysed`,
            :meth:`skipped`, :meth:`by_mode`) keep it: it describes the model, not a layer.
            List operations that build a plain list (``+``, slicing) drop it.
    """

    classes: ClassReport | None

    def __init__(
        self, records: Iterable[LayerReport] = (), classes: ClassReport | None = None
    ) -> None:
        super().__init__(records)
        self.classes = classes

    def analysed(self) -> Report:
        return Report((r for r in self if not r.skipped), self.classes)

    def skipped(self) -> Report:
        return Report((r for r in self if r.skipped), self.classes)

    def by_mode(self, mode: str) -> Report:
        return Report((r for r in self if r.mode == mode), self.classes)

    def get(self, name: str, mode: str | None = None) -> LayerReport | None:
        for record in self:
            if record.name == name and (mode is None or record.mode == mode):
                return record
        return None

    def stable_rank_ratios(self) -> dict[str, float]:
        """Each analysed layer's stable rank over that of a random matrix of its shape
        (:func:`svd_callback.rmt.random_stable_rank`), read from its ``unfold`` record (the
        weight matrix itself; any record of a layer without a conv mode): about 1 for random
        weights, lower once training concentrates the spectrum."""
        out: dict[str, float] = {}
        for record in self.analysed():
            conv = record.kind.startswith("conv")
            value = record.metrics.get("stable_rank")
            if (conv and record.mode != "unfold") or record.name in out or value is None \
                    or not record.matrix_shape or min(record.matrix_shape) < 2 \
                    or not math.isfinite(value):
                continue
            out[record.name] = value / random_stable_rank(*record.matrix_shape)
        return out

    def looks_untrained(self, random_like: float = 0.8) -> bool | None:
        """Whether every layer's spectrum is that of random weights (every
        :meth:`stable_rank_ratios` >= ``random_like``; None when none can be read): a
        network at its initialisation, or one that never learned."""
        ratios = self.stable_rank_ratios()
        return None if not ratios else min(ratios.values()) >= random_like

    def nan_reasons(self, metric: str = "alpha") -> list[str]:
        """One line per analysed record whose ``metric`` is NaN, with the recorded reason."""
        lines = []
        for record in self.analysed():
            if metric not in record.metrics or not math.isnan(_as_float(record.metrics[metric])):
                continue
            reason = record.notes.get(metric, "no reason recorded")
            lines.append(f"{record.name} [{record.mode}] {metric} = nan: {reason}")
        return lines

    def quality_reasons(self) -> list[str]:
        """One line per analysed record whose quality label was not judged although its alpha
        was fitted (``notes["quality"]``: a matrix of fewer than 100 eigenvalues)."""
        return [f"{r.name} [{r.mode}] quality {r.quality}: {r.notes['quality']}"
                for r in self.analysed() if "quality" in r.notes]

    def to_dataframe(self):
        """One row per (layer, mode); needs pandas."""
        import pandas as pd

        return pd.DataFrame([r.as_row() for r in self])
