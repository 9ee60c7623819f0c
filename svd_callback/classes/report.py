"""What one class analysis found (:class:`ClassReport`) and what the next one needs from it
(:class:`ClassTracker`); docs/methods.md#class-statistics."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from svd_callback.classes.factorization import FactorizationResult
from svd_callback.classes.hypergraph import Edges

__all__ = ["ClassReport", "ClassTracker", "Part", "Where"]


class Part(str, enum.Enum):
    """The parts of the class analysis that can fail or be left out."""

    ANALYSIS = "analysis"
    """The whole analysis."""
    PROBE = "probe"
    """The probe set, its labels and the forward pass over it."""
    FORWARD = "forward"
    """The forward pass itself (while capturing; reported under :attr:`PROBE`)."""
    LAYER = "layer"
    """One layer's hypergraph (named)."""
    FEATURES = "features"
    """The class-specific penultimate features."""
    FUNCTIONAL = "functional"
    """The functional test of the features through the head."""
    FACTORIZATION = "factorization"
    """The factorization rank (of one named layer, or the choice of the layers)."""
    CLASS = "class"
    """One class of the probe (numbered)."""


class Where(str):
    """Where a reason of the class analysis applies: a :class:`Part` and, for per-layer and
    per-class parts, the layer or class (:attr:`name`). It reads as the text the history file's
    ``class_summary`` row and the warnings write (``probe``, ``layer fc``, ``class 3``), so it
    is also the key a reader of those finds."""

    part: Part
    name: str | int | None

    def __new__(cls, part: Part, name: str | int | None = None) -> Where:
        self = super().__new__(cls, part.value if name is None else f"{part.value} {name}")
        self.part, self.name = part, name
        return self

    def __reduce__(self) -> tuple:  # pickled (gathered across ranks) as its fields
        return Where, (self.part, self.name)

    @classmethod
    def layer(cls, name: str) -> Where:
        return cls(Part.LAYER, name)

    @classmethod
    def factorization(cls, name: str | None = None) -> Where:
        return cls(Part.FACTORIZATION, name)


@dataclass
class ClassReport:
    """The class statistics of one analysis.

    Attributes:
        layers: layer -> stat -> value (NaN where undefined): the hypergraph statistics of
            :class:`HypergraphStats` (``jaccard_mean`` ...), at the feature layer the
            :meth:`ClassFeatures.scalars` (``feature_fraction_mean`` = mean |S_c| / D ...), at
            factorised layers ``factorization_rank`` / ``_fit`` / ``_corcondia``.
        jaccard: layer -> (C, C) float64 class x class Jaccard of the hyperedges (NaN for a
            class without an edge).
        specific_neurons: layer -> (C,) class-specific neurons per class (0 for a class in the
            probe without an edge, NaN for a class absent from the probe).
        edges: layer -> class -> hyperedge (node indices: node j is the neuron of the j-th
            largest singular value, flat index ``neurons[layer][j]``).
        n_nodes: layer -> number of neurons (nodes) analysed.
        neurons: layer -> (n_nodes,) flat neuron index ``group * r + i`` of each node.
        bases: layer -> ``(U, Vh)`` of the layer's unfold SVD (every neuron, on the CPU), for
            matching the neurons of the next analysis (:func:`match_neurons`).
        specific_retained: layer -> (C,) class-specific neurons of the previous analysis
            (matched by their singular vectors) still class-specific to the class now (NaN at the
            first analysis, for a class without a previous edge or absent from the probe).
        feature_layer: module whose input gave the penultimate features (None if none).
        n_features: D, the number of penultimate features.
        feature_fraction: (C,) |S_c| / D (0 for a class in the probe whose features are all
            zero, NaN for an absent class).
        feature_sets: class -> S_c.
        factorization: layer -> :class:`FactorizationResult`.
        num_classes: C.
        class_counts: (C,) probe images per class.
        reasons: what could not be computed and why, by :class:`Where` (``probe``,
            ``features``, ``functional``, ``factorization``, ``layer <name>``,
            ``factorization <name>``, ``class <c>``, ``analysis``).
        notes: remarks that did not prevent a value.
        seconds: wall time of the analysis.
    """

    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    jaccard: dict[str, torch.Tensor] = field(default_factory=dict)
    specific_neurons: dict[str, torch.Tensor] = field(default_factory=dict)
    edges: dict[str, Edges] = field(default_factory=dict)
    n_nodes: dict[str, int] = field(default_factory=dict)
    neurons: dict[str, torch.Tensor] = field(default_factory=dict)
    bases: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    specific_retained: dict[str, torch.Tensor] = field(default_factory=dict)
    feature_layer: str | None = None
    n_features: int = 0
    feature_fraction: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    feature_sets: dict[int, frozenset[int]] = field(default_factory=dict)
    factorization: dict[str, FactorizationResult] = field(default_factory=dict)
    num_classes: int = 0
    class_counts: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    reasons: dict[Where, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = math.nan

    def scalars(self) -> dict[tuple[str, str], float]:
        """(stat, layer) -> value for the finite statistics (for ``classes/<stat>/<layer>``)."""
        return {
            (stat, layer): float(value)
            for layer, stats in self.layers.items()
            for stat, value in stats.items()
            if math.isfinite(value)
        }

    def record_metrics(self) -> dict[str, dict[str, float]]:
        """layer -> every statistic plus the per-class ``specific_neurons/<c>``,
        ``specific_retained/<c>`` (and, at the feature layer, ``feature_count/<c>`` = |S_c|)
        values the class alert rules read."""
        out: dict[str, dict[str, float]] = {}
        for layer, stats in self.layers.items():
            metrics = {k: float(v) for k, v in stats.items()}
            specific = self.specific_neurons.get(layer)
            if specific is not None:
                metrics.update({f"specific_neurons/{c}": float(v)
                                for c, v in enumerate(specific.tolist())})
            retained = self.specific_retained.get(layer)
            if retained is not None:
                metrics.update({f"specific_retained/{c}": float(v)
                                for c, v in enumerate(retained.tolist())})
            if layer == self.feature_layer and self.feature_fraction.numel():
                metrics.update({f"feature_count/{c}": float(v) * self.n_features
                                for c, v in enumerate(self.feature_fraction.tolist())})
            out[layer] = metrics
        return out

    @staticmethod
    def metrics_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
        """:meth:`record_metrics` read back from the ``class`` and ``class_summary`` rows of one
        analysis (:meth:`rows`; ``null`` as NaN): each layer's statistics, its
        ``specific_neurons/<c>`` and ``specific_retained/<c>``, and at the feature layer
        ``feature_count/<c>`` = ``feature_fraction[c]`` D, with D = ``feature_count_mean`` /
        ``feature_fraction_mean`` (the rows do not hold D itself; a class whose fraction is 0
        has a count of 0 even where D is unknown)."""
        rows = list(rows)
        summary = next((r for r in rows if r.get("type") == "class_summary"), {})
        out: dict[str, dict[str, float]] = {}
        for row in rows:
            if row.get("type") != "class":
                continue
            metrics = {str(k): _float(v) for k, v in (row.get("metrics") or {}).items()}
            for key in ("specific_neurons", "specific_retained"):
                if row.get(key) is not None:
                    metrics.update({f"{key}/{c}": _float(v) for c, v in enumerate(row[key])})
            fractions = summary.get("feature_fraction") or []
            if row.get("layer") == summary.get("feature_layer") and fractions:
                width = _feature_width(metrics)
                metrics.update({f"feature_count/{c}": _float(v) * width if width is not None
                                else (0.0 if v == 0 else math.nan)
                                for c, v in enumerate(fractions)})
            out[str(row["layer"])] = metrics
        return out

    def rows(self) -> list[dict[str, Any]]:
        """JSON-ready rows for the history file: one ``class`` row per layer (its statistics,
        per-class values and Jaccard matrix) and one ``class_summary`` row."""
        rows: list[dict[str, Any]] = []
        for layer, stats in self.layers.items():
            row: dict[str, Any] = {"type": "class", "layer": layer, "metrics": dict(stats)}
            if layer in self.n_nodes:
                edges = self.edges.get(layer, {})
                row.update({
                    "n_nodes": self.n_nodes[layer],
                    "edge_size": [len(edges[c]) if c in edges else None
                                  for c in range(self.num_classes)],
                    "specific_neurons": self.specific_neurons[layer].tolist(),
                    "specific_retained": self.specific_retained[layer].tolist()
                    if layer in self.specific_retained else None,
                    "jaccard_matrix": self.jaccard[layer].tolist(),
                })
            if layer in self.factorization:
                result = self.factorization[layer]
                row["factorization"] = {"fits": result.fits.tolist(),
                                        "corcondia": result.corcondia.tolist(),
                                        "shape": list(result.shape), "reason": result.reason,
                                        "notes": list(result.notes)}
            row["reason"] = self.reasons.get(Where.layer(layer))
            rows.append(row)
        rows.append({
            "type": "class_summary",
            "num_classes": self.num_classes,
            "class_counts": self.class_counts.tolist(),
            "feature_layer": self.feature_layer,
            "feature_fraction": self.feature_fraction.tolist(),
            "reasons": dict(self.reasons),
            "notes": list(self.notes),
            "seconds": self.seconds,
        })
        return rows


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _feature_width(metrics: Mapping[str, float]) -> int | None:
    """D, the penultimate features, from ``feature_count_mean`` = mean |S_c| and
    ``feature_fraction_mean`` = mean |S_c| / D (None when the fraction is 0 or unknown)."""
    count = metrics.get("feature_count_mean", math.nan)
    fraction = metrics.get("feature_fraction_mean", math.nan)
    if not (math.isfinite(count) and math.isfinite(fraction)) or fraction <= 0:
        return None
    return round(count / fraction)


class ClassTracker:
    """What one analysis needs from the previous one: every layer's hyperedges, node -> neuron
    indices and singular vectors (to match the neurons, :func:`match_neurons`), the
    class-specific feature sets (for the stability Jaccards), the first analysis's functional
    test values and the analysis count (for the factorization schedule). :meth:`state_dict`
    holds plain types and CPU tensors (the singular vectors) for checkpoints."""

    def __init__(self) -> None:
        self.analyses = 0
        self.edges: dict[str, Edges] = {}
        self.neurons: dict[str, torch.Tensor] = {}
        self.bases: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.feature_sets: dict[int, frozenset[int]] | None = None
        self.first_functional: dict[str, float] | None = None

    def update(self, report: ClassReport) -> None:
        """Remember ``report``'s edges and feature sets (layers it did not analyse keep
        theirs) and count the analysis."""
        self.analyses += 1
        self.edges.update({layer: dict(edges) for layer, edges in report.edges.items()})
        for layer in report.edges:
            if layer in report.bases and layer in report.neurons:
                self.bases[layer] = report.bases[layer]
                self.neurons[layer] = report.neurons[layer]
            else:  # edges without vectors cannot be matched next time
                self.bases.pop(layer, None)
                self.neurons.pop(layer, None)
        if report.feature_layer is not None and Where(Part.FEATURES) not in report.reasons:
            self.feature_sets = dict(report.feature_sets)
        stats = report.layers.get(report.feature_layer or "", {})
        if self.first_functional is None and math.isfinite(
                stats.get("functional_gain", math.nan)):
            self.first_functional = {k: float(v) for k, v in stats.items()
                                     if k.startswith("functional_") and
                                     not k.endswith("_first")}

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 2,
            "analyses": self.analyses,
            "neurons": {layer: n.tolist() for layer, n in self.neurons.items()},
            "bases": {layer: [u.clone(), vh.clone()] for layer, (u, vh) in self.bases.items()},
            "first_functional": None if self.first_functional is None
            else dict(self.first_functional),
            "edges": {layer: [[c, sorted(e)] for c, e in edges.items()]
                      for layer, edges in self.edges.items()},
            "feature_sets": None if self.feature_sets is None
            else [[c, sorted(s)] for c, s in self.feature_sets.items()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ValueError: not a tracker state of a known version.
        """
        if not isinstance(state, Mapping) or state.get("version") not in (1, 2):
            raise ValueError(f"not a ClassTracker state of version 1 or 2: {state!r:.80}")
        self.analyses = int(state["analyses"])
        self.edges = {layer: {int(c): frozenset(int(i) for i in e) for c, e in edges}
                      for layer, edges in state["edges"].items()}
        sets = state.get("feature_sets")
        self.feature_sets = None if sets is None else {
            int(c): frozenset(int(i) for i in s) for c, s in sets}
        # Version 1 (neurons identified by rank) has no vectors: the next analysis cannot
        # match its neurons and leaves the stability statistics NaN, with a note.
        self.neurons = {layer: torch.tensor(n, dtype=torch.int64)
                        for layer, n in state.get("neurons", {}).items()}
        self.bases = {layer: (torch.as_tensor(u), torch.as_tensor(vh))
                      for layer, (u, vh) in state.get("bases", {}).items()}
        first = state.get("first_functional")
        self.first_functional = None if first is None else {k: float(v)
                                                            for k, v in first.items()}
