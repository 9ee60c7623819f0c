"""The class-level analysis of one model on one probe set (docs/methods.md#class-statistics).

:func:`analyze_classes` makes one forward pass over a fixed :class:`ProbeSet` and, per analysed
layer, reduces what the layer receives on the fly (nothing bigger than an (I, k) matrix is kept
per layer, so every conv and linear layer of a large network can be watched):

1. SVD-neuron signals s_i = sigma_i <v_i, mean_p x_p> of the layer's top-k neurons (unfold SVD,
   :func:`neuron_signals`), their per-class means a_{c,i} = mean |s_i| over the class's images;
2. the class hyperedges e_c (the neurons holding the share ``tau`` of a_{c,.}, or the top ``m``),
   the hypergraph statistics against the previous analysis's edges (:func:`hypergraph_stats`),
   the class x class Jaccard matrix and, per class, the number of its class-specific neurons
   (nodes of e_c in no other edge);
3. at the penultimate layer (the input of the classifier head, :func:`find_penultimate_layer`),
   Badola et al.'s class-specific feature sets S_c and |S_c| / D per class;
4. optionally, the non-negative CP factorization rank of chosen layers' rectified outputs
   (:func:`factorization_rank`; about 0.8 s per layer on 2 CPU threads, off by default).

Nodes are identified by their rank (node i = the i-th largest singular value), so the edge
stability across analyses compares the hyperedges of the i-th neurons of each analysis.

The forward pass never changes the model: it runs under ``torch.no_grad()`` with every module in
eval mode (batch-norm uses its running statistics and updates nothing, dropout is off) inside a
forked random generator, and each module's own ``training`` flag is restored afterwards
(:func:`frozen_forward`). The statistics therefore describe the network as it would be
evaluated. Bad input never raises: an empty probe, non-integer targets, a missing penultimate
layer, a layer that cannot be read or a failing forward pass each leave NaN statistics and a
reason in :attr:`ClassReport.reasons`, and the rest of the analysis still runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from svd_callback.classes.factorization import FactorizationResult, factorization_rank
from svd_callback.classes.features import (
    class_specific_features,
    find_penultimate_layer,
    pool_features,
)
from svd_callback.classes.hypergraph import Edges, class_hyperedges, hypergraph_stats
from svd_callback.classes.probe import ProbeSet, first_tensor
from svd_callback.classes.signals import class_mean_signals, neuron_signals
from svd_callback.layers import frozen_forward, has_weight, read_weight

CLASS_MODE = "classes"
"""The ``mode`` of the class records given to the alert engine (beside ``unfold`` etc.)."""

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values")
_TARGET_KEYS = ("y", "label", "labels", "target", "targets")
_FACTORIZATION_IMAGES = 64
"""Images kept per factorization layer (``factorization_rank``'s default ``max_images``)."""


@dataclass(frozen=True)
class ClassAnalysisConfig:
    """Options of the class-level analysis.

    Args:
        probe_size: images in the class-stratified probe (chosen once).
        top_k: SVD-neurons (largest sigma) per layer, the hypergraph's nodes.
        layers: names of the layers to analyse (None: every monitored conv and linear layer).
            Cost per layer and analysis: one SVD of its unfolded weight and one pass over its
            probe input, O(I * c * k^2 * H * W) for a conv; on the digits CNN the whole
            analysis of its five layers takes about 60 ms for 256 images on 2 CPU threads.
        tau: hyperedge e_c = the smallest set of neurons holding the share ``tau`` of class c's
            mean |signal| (used when ``m`` is None).
        m: hyperedge e_c = the ``m`` neurons of largest mean |signal| (instead of ``tau``).
        feature_mass: the mass k of Badola et al.'s class-specific features.
        feature_layer: module whose *input* holds the penultimate features (None: the last
            ``nn.Linear``, see :func:`find_penultimate_layer`).
        factorization_every_n: factorization rank every n analyses (0: never, the default).
        factorization_layers: modules whose rectified *outputs* are factorised (None: the last
            analysed conv layer).
        factorization_max_rank: largest CP rank tried.
        batch_size: probe images per forward pass.
        probe_batches: at most this many validation batches are read to choose the probe
            (None: all).
        seed: seed of the private generators (probe choice, factorization starts).

    Raises:
        ValueError: on any invalid option, naming it and the value given.
    """

    probe_size: int = 256
    top_k: int = 32
    layers: tuple[str, ...] | None = None
    tau: float | None = 0.5
    m: int | None = None
    feature_mass: float = 0.5
    feature_layer: str | None = None
    factorization_every_n: int = 0
    factorization_layers: tuple[str, ...] | None = None
    factorization_max_rank: int = 6
    batch_size: int = 256
    probe_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("probe_size", 1), ("top_k", 1), ("factorization_every_n", 0),
                          ("factorization_max_rank", 1), ("batch_size", 1), ("seed", 0)):
            _check_int(name, getattr(self, name), low)
        if self.probe_batches is not None:
            _check_int("probe_batches", self.probe_batches, 1)
        if self.m is not None:
            _check_int("m", self.m, 1)
            object.__setattr__(self, "tau", None)
        elif self.tau is None or not 0.0 < float(self.tau) <= 1.0:
            raise ValueError(f"tau must be in (0, 1] (or give m), got {self.tau!r}")
        if not 0.0 < float(self.feature_mass) <= 1.0:
            raise ValueError(f"feature_mass must be in (0, 1], got {self.feature_mass!r}")
        for name in ("layers", "factorization_layers"):
            value = getattr(self, name)
            if value is None:
                continue
            names = (value,) if isinstance(value, str) else tuple(value)
            if not names or any(not isinstance(n, str) or not n for n in names):
                raise ValueError(f"{name} must hold non-empty layer names, got {value!r}")
            object.__setattr__(self, name, names)
        if self.feature_layer is not None and (
            not isinstance(self.feature_layer, str) or not self.feature_layer
        ):
            raise ValueError(f"feature_layer must be a layer name or None, got "
                             f"{self.feature_layer!r}")

    @classmethod
    def coerce(cls, value: bool | ClassAnalysisConfig | Mapping[str, Any] | None
               ) -> ClassAnalysisConfig | None:
        """None for ``False``/None, the defaults for ``True``, a config from a mapping of
        options (a YAML section).

        Raises:
            ValueError: an unknown option or a value of another type.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"class_analysis has unknown options {unknown}; known: "
                                 f"{sorted(known)}")
            return cls(**dict(value))
        raise ValueError(f"class_analysis must be a bool, a ClassAnalysisConfig or a mapping of "
                         f"its options, got {value!r}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class ClassRecord:
    """One layer's class statistics in the shape the alert engine reads (``mode`` =
    :data:`CLASS_MODE`; per-class values under ``<stat>/<class>`` keys)."""

    name: str
    metrics: dict[str, float]
    mode: str = CLASS_MODE
    reason: str | None = None
    quality: str | None = None


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
        edges: layer -> class -> hyperedge (neuron ranks).
        n_nodes: layer -> number of neurons (nodes) analysed.
        feature_layer: module whose input gave the penultimate features (None if none).
        n_features: D, the number of penultimate features.
        feature_fraction: (C,) |S_c| / D (0 for a class in the probe whose features are all
            zero, NaN for an absent class).
        feature_sets: class -> S_c.
        factorization: layer -> :class:`FactorizationResult`.
        num_classes: C.
        class_counts: (C,) probe images per class.
        reasons: what could not be computed and why (keys ``probe``, ``features``,
            ``factorization``, ``layer <name>``, ``factorization <name>``, ``class <c>``).
        notes: remarks that did not prevent a value.
        seconds: wall time of the analysis.
    """

    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    jaccard: dict[str, torch.Tensor] = field(default_factory=dict)
    specific_neurons: dict[str, torch.Tensor] = field(default_factory=dict)
    edges: dict[str, Edges] = field(default_factory=dict)
    n_nodes: dict[str, int] = field(default_factory=dict)
    feature_layer: str | None = None
    n_features: int = 0
    feature_fraction: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    feature_sets: dict[int, frozenset[int]] = field(default_factory=dict)
    factorization: dict[str, FactorizationResult] = field(default_factory=dict)
    num_classes: int = 0
    class_counts: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    reasons: dict[str, str] = field(default_factory=dict)
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
        """layer -> every statistic plus the per-class ``specific_neurons/<c>`` (and, at the
        feature layer, ``feature_count/<c>`` = |S_c|) values the class alert rules read."""
        out: dict[str, dict[str, float]] = {}
        for layer, stats in self.layers.items():
            metrics = {k: float(v) for k, v in stats.items()}
            specific = self.specific_neurons.get(layer)
            if specific is not None:
                metrics.update({f"specific_neurons/{c}": float(v)
                                for c, v in enumerate(specific.tolist())})
            if layer == self.feature_layer and self.feature_fraction.numel():
                metrics.update({f"feature_count/{c}": float(v) * self.n_features
                                for c, v in enumerate(self.feature_fraction.tolist())})
            out[layer] = metrics
        return out

    def alert_records(self) -> list[ClassRecord]:
        """The statistics as records for :meth:`AlertEngine.update` (mode ``"classes"``)."""
        return class_records(self.record_metrics())

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
                    "jaccard_matrix": self.jaccard[layer].tolist(),
                })
            if layer in self.factorization:
                result = self.factorization[layer]
                row["factorization"] = {"fits": result.fits.tolist(),
                                        "corcondia": result.corcondia.tolist(),
                                        "shape": list(result.shape), "reason": result.reason,
                                        "notes": list(result.notes)}
            row["reason"] = self.reasons.get(f"layer {layer}")
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


def class_records(metrics: Mapping[str, Mapping[str, float]]) -> list[ClassRecord]:
    """:class:`ClassRecord` objects from :meth:`ClassReport.record_metrics` output."""
    return [ClassRecord(layer, dict(values)) for layer, values in metrics.items()]


class ClassTracker:
    """What one analysis needs from the previous one: every layer's hyperedges and the
    class-specific feature sets (for the stability Jaccards), and the analysis count (for the
    factorization schedule). Plain-type :meth:`state_dict` for checkpoints."""

    def __init__(self) -> None:
        self.analyses = 0
        self.edges: dict[str, Edges] = {}
        self.feature_sets: dict[int, frozenset[int]] | None = None

    def update(self, report: ClassReport) -> None:
        """Remember ``report``'s edges and feature sets (layers it did not analyse keep
        theirs) and count the analysis."""
        self.analyses += 1
        self.edges.update({layer: dict(edges) for layer, edges in report.edges.items()})
        if report.feature_layer is not None and "features" not in report.reasons:
            self.feature_sets = dict(report.feature_sets)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "analyses": self.analyses,
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
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise ValueError(f"not a ClassTracker state of version 1: {state!r:.80}")
        self.analyses = int(state["analyses"])
        self.edges = {layer: {int(c): frozenset(int(i) for i in e) for c, e in edges}
                      for layer, edges in state["edges"].items()}
        sets = state.get("feature_sets")
        self.feature_sets = None if sets is None else {
            int(c): frozenset(int(i) for i in s) for c, s in sets}


def analyze_classes(
    model: nn.Module,
    probe: ProbeSet,
    config: ClassAnalysisConfig | None = None,
    *,
    layers: Sequence[str] | None = None,
    tracker: ClassTracker | None = None,
    factorize: bool | None = None,
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> ClassReport:
    """Class-overlap hypergraphs, class-specific features and (optionally) factorization rank.

    Args:
        model: the network (never modified; see :func:`frozen_forward`).
        probe: the fixed probe set; ``probe.labels`` must be integer class labels.
        config: options (None: :class:`ClassAnalysisConfig` defaults).
        layers: the monitored layers to choose from when ``config.layers`` is None (None: every
            conv and linear layer of the model).
        tracker: the previous analysis's state (edges and feature sets for the stability
            Jaccards; updated in place), or None.
        factorize: run the factorization rank now; None decides from
            ``config.factorization_every_n`` and the tracker's analysis count.
        forward: runs the model on a chunk of probe inputs, ``forward(model, inputs)``
            (None: ``model(inputs)``), for models whose forward takes another structure.

    Returns:
        A :class:`ClassReport`; never raises for bad input (see its ``reasons``).
    """
    started = time.perf_counter()
    config = config or ClassAnalysisConfig()
    report = ClassReport()
    try:
        _analyze(model, probe, config, layers, tracker, factorize, report, forward)
    except Exception as error:  # noqa: BLE001 - bad input becomes a reason, never an exception
        report.reasons["analysis"] = f"class analysis failed: {type(error).__name__}: {error}"
    report.seconds = time.perf_counter() - started
    if tracker is not None:
        tracker.update(report)
    return report


def _analyze(
    model: nn.Module,
    probe: ProbeSet,
    config: ClassAnalysisConfig,
    layers: Sequence[str] | None,
    tracker: ClassTracker | None,
    factorize: bool | None,
    report: ClassReport,
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> None:
    labels, reason = _probe_labels(probe)
    if reason is not None:
        report.reasons["probe"] = reason
        return
    modules = dict(model.named_modules())
    signal_layers = _signal_layers(model, modules, config, layers, report)
    feature_layer, feature_module = _feature_layer(model, modules, config, report)
    due = factorize
    if due is None:
        count = tracker.analyses if tracker is not None else 0
        due = bool(config.factorization_every_n) and count % config.factorization_every_n == 0
    factor_layers = _factorization_layers(modules, config, signal_layers, report) if due else []

    num_classes = int(labels.max()) + 1
    if isinstance(feature_module, nn.Linear):  # the classifier head: one output per class
        num_classes = max(num_classes, int(feature_module.out_features))
    report.num_classes = num_classes
    report.class_counts = torch.bincount(labels, minlength=num_classes)
    for c in torch.nonzero(report.class_counts == 0).flatten().tolist():
        report.reasons[f"class {c}"] = "class absent from the probe set"

    captured = _capture(model, probe.inputs, modules, signal_layers, feature_layer,
                        factor_layers, config, forward)
    if "forward" in captured.errors:
        report.reasons["probe"] = captured.errors["forward"]
        for name in signal_layers:
            report.layers.setdefault(name, {})
        return
    for name in signal_layers:
        _hypergraph_of_layer(name, captured, labels, config, tracker, report)
    if feature_layer is not None:
        _features(feature_layer, captured, labels, config, tracker, report)
    for name in factor_layers:
        _factorize(name, captured, config, report)


def _probe_labels(probe: ProbeSet) -> tuple[torch.Tensor, str | None]:
    labels = torch.as_tensor(probe.labels).detach().to("cpu").reshape(-1)
    if labels.numel() == 0:
        return labels, "empty probe set: no class statistics"
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return labels, (f"probe targets of dtype {labels.dtype} are not integer class labels "
                        "(a regression task?): no class statistics")
    if int(labels.min()) < 0:
        return labels, "probe labels hold negative values: no class statistics"
    if len(probe.inputs) != labels.numel():
        return labels, f"{len(probe.inputs)} probe inputs for {labels.numel()} labels"
    return labels.to(torch.int64), None


def _signal_layers(
    model: nn.Module,
    modules: dict[str, nn.Module],
    config: ClassAnalysisConfig,
    layers: Sequence[str] | None,
    report: ClassReport,
) -> list[str]:
    if config.layers is not None:
        names = list(config.layers)
    elif layers is not None:
        names = list(layers)
    else:
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, *_CONV_TYPES))]
    kept = []
    for name in names:
        module = modules.get(name)
        if module is None:
            report.reasons[f"layer {name}"] = "no module of this name in the model"
            report.layers[name] = {}
        elif not has_weight(module):
            report.reasons[f"layer {name}"] = f"{type(module).__name__} has no weight tensor"
            report.layers[name] = {}
        else:
            kept.append(name)
    return kept


def _feature_layer(
    model: nn.Module, modules: dict[str, nn.Module], config: ClassAnalysisConfig,
    report: ClassReport,
) -> tuple[str | None, nn.Module | None]:
    if config.feature_layer is not None:
        if config.feature_layer not in modules:
            report.reasons["features"] = f"feature_layer {config.feature_layer!r} not found"
            return None, None
        name = config.feature_layer
    else:
        name, reason = find_penultimate_layer(model)
        if name is None:
            report.reasons["features"] = f"penultimate layer not found: {reason}"
            return None, None
    report.feature_layer = name
    return name, modules[name]


def _factorization_layers(
    modules: dict[str, nn.Module], config: ClassAnalysisConfig, signal_layers: list[str],
    report: ClassReport,
) -> list[str]:
    if config.factorization_layers is not None:
        names = []
        for name in config.factorization_layers:
            if name in modules:
                names.append(name)
            else:
                report.reasons[f"factorization {name}"] = "no module of this name in the model"
        return names
    convs = [n for n in signal_layers if isinstance(modules[n], _CONV_TYPES)]
    if not convs:
        report.reasons["factorization"] = "no conv layer analysed: give factorization_layers"
        return []
    return convs[-1:]


@dataclass
class _Captured:
    signals: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    sigma: dict[str, torch.Tensor] = field(default_factory=dict)
    features: list[torch.Tensor] = field(default_factory=list)
    outputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _capture(
    model: nn.Module,
    inputs: torch.Tensor,
    modules: dict[str, nn.Module],
    signal_layers: list[str],
    feature_layer: str | None,
    factor_layers: list[str],
    config: ClassAnalysisConfig,
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> _Captured:
    """One forward pass; hooks reduce each batch to neuron signals, pooled features and (for
    factorization) the first outputs. A hook that fails records an error for its layer only."""
    out = _Captured()
    seen: set[tuple[str, str]] = set()  # (role, layer) recorded in the current batch
    kept_outputs: dict[str, int] = dict.fromkeys(factor_layers, 0)

    def signal_hook(name: str):
        module = modules[name]
        params = None if isinstance(module, nn.Linear) else module  # other kinds: a reason

        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            if ("signal", name) in seen or f"layer {name}" in out.errors:
                return
            seen.add(("signal", name))
            try:
                signals = neuron_signals(read_weight(mod), first_tensor(args), params,
                                         config.top_k)
            except Exception as error:  # noqa: BLE001
                out.errors[f"layer {name}"] = f"{type(error).__name__}: {error}"
                return
            out.signals.setdefault(name, []).append(signals.values)
            out.sigma.setdefault(name, signals.sigma)
            if signals.reason is not None:
                out.errors.setdefault(f"layer {name}", signals.reason)

        return hook

    def feature_hook(mod: nn.Module, args: tuple, output: Any) -> None:
        if ("feature", "") in seen or "features" in out.errors:
            return
        seen.add(("feature", ""))
        try:
            channel_dim = -1 if isinstance(mod, nn.Linear) else 1
            out.features.append(pool_features(first_tensor(args), channel_dim))
        except Exception as error:  # noqa: BLE001
            out.errors["features"] = f"{type(error).__name__}: {error}"

    def output_hook(name: str):
        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            if ("output", name) in seen or f"factorization {name}" in out.errors:
                return
            seen.add(("output", name))
            room = _FACTORIZATION_IMAGES - kept_outputs[name]
            if room <= 0:
                return
            try:
                tensor = first_tensor(output)[:room].detach().clone()
            except Exception as error:  # noqa: BLE001
                out.errors[f"factorization {name}"] = f"{type(error).__name__}: {error}"
                return
            kept_outputs[name] += tensor.shape[0]
            out.outputs.setdefault(name, []).append(tensor)

        return hook

    handles = [modules[n].register_forward_hook(signal_hook(n)) for n in signal_layers]
    if feature_layer is not None:
        handles.append(modules[feature_layer].register_forward_hook(feature_hook))
    handles += [modules[n].register_forward_hook(output_hook(n)) for n in factor_layers]
    parameter = next(model.parameters(), None)
    try:
        with frozen_forward(model):
            for start in range(0, len(inputs), config.batch_size):
                seen.clear()
                batch = inputs[start : start + config.batch_size]
                if parameter is not None:
                    dtype = parameter.dtype if (
                        batch.is_floating_point() and parameter.is_floating_point()
                    ) else batch.dtype
                    batch = batch.to(device=parameter.device, dtype=dtype)
                if forward is None:
                    model(batch)
                else:
                    forward(model, batch)
    except Exception as error:  # noqa: BLE001 - a model that rejects the probe
        out.errors["forward"] = f"probe forward pass failed: {type(error).__name__}: {error}"
    finally:
        for handle in handles:
            handle.remove()
    return out


def _hypergraph_of_layer(
    name: str,
    captured: _Captured,
    labels: torch.Tensor,
    config: ClassAnalysisConfig,
    tracker: ClassTracker | None,
    report: ClassReport,
) -> None:
    num_classes = report.num_classes
    error = captured.errors.get(f"layer {name}")
    pieces = captured.signals.get(name)
    if pieces is None:
        report.reasons[f"layer {name}"] = error or "the layer was not called by the forward pass"
        report.layers[name] = {}
        return
    if error is not None:
        report.reasons[f"layer {name}"] = error
    values = torch.cat(pieces)
    n_nodes = int(values.shape[1])
    means = class_mean_signals(values, labels.to(values.device), num_classes)
    report.notes.extend(f"{name}: {note}" for note in means.notes)
    edges = class_hyperedges(means, m=config.m, tau=config.tau)
    previous = tracker.edges.get(name) if tracker is not None else None
    stats = hypergraph_stats(edges, n_nodes, previous)
    report.layers[name] = dict(stats.scalars)
    report.edges[name] = edges
    report.n_nodes[name] = n_nodes
    jaccard = torch.full((num_classes, num_classes), math.nan, dtype=torch.float64)
    index = torch.tensor(stats.classes, dtype=torch.int64)
    if index.numel():
        jaccard[index[:, None], index[None, :]] = stats.jaccard_matrix
    report.jaccard[name] = jaccard
    specific = torch.where(report.class_counts > 0, 0.0, math.nan).to(torch.float64)
    single = (stats.degree == 1).tolist()
    for c, edge in edges.items():
        specific[c] = float(sum(single[i] for i in edge))
    report.specific_neurons[name] = specific
    if not edges and f"layer {name}" not in report.reasons:
        report.reasons[f"layer {name}"] = "no class has a non-zero finite signal"


def _features(
    name: str,
    captured: _Captured,
    labels: torch.Tensor,
    config: ClassAnalysisConfig,
    tracker: ClassTracker | None,
    report: ClassReport,
) -> None:
    num_classes = report.num_classes
    report.feature_fraction = torch.full((num_classes,), math.nan, dtype=torch.float64)
    if "features" in captured.errors or not captured.features:
        report.reasons["features"] = captured.errors.get(
            "features", f"feature layer {name!r} was not called by the forward pass")
        report.layers.setdefault(name, {})
        return
    features = torch.cat(captured.features)
    previous = tracker.feature_sets if tracker is not None else None
    result = class_specific_features(features, labels.to(features.device), num_classes,
                                     mass=config.feature_mass, previous=previous)
    stats = report.layers.setdefault(name, {})
    stats.update(result.scalars())
    report.n_features = result.n_features
    report.feature_sets = dict(result.sets)
    fraction = result.size_fraction.clone()
    present = report.class_counts[:num_classes] > 0
    fraction[present & torch.isnan(fraction)] = 0.0  # in the probe, but no positive feature
    report.feature_fraction = fraction
    report.notes.extend(f"{name} features: {note}" for note in result.notes)


def _factorize(
    name: str, captured: _Captured, config: ClassAnalysisConfig, report: ClassReport
) -> None:
    key = f"factorization {name}"
    pieces = captured.outputs.get(name)
    stats = report.layers.setdefault(name, {})
    if key in captured.errors or not pieces:
        report.reasons[key] = captured.errors.get(key, "the layer was not called")
        stats.update(FactorizationResult(None, torch.empty(0), torch.empty(0),
                                         (0, 0, 0)).scalars())
        return
    result = factorization_rank(torch.cat(pieces), max_rank=config.factorization_max_rank,
                                seed=config.seed)
    report.factorization[name] = result
    stats.update(result.scalars())
    if result.reason is not None:
        report.reasons[key] = result.reason


# ---------------------------------------------------------------------- probes from loaders
class ProbeError(ValueError):
    """A loader whose batches cannot give a probe (the message says why)."""


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of one batch.

    Accepted: a tuple or list of at least two items (the first is the input, the second the
    target; further items, e.g. sample weights or ids, are ignored), or a mapping with an input
    key (``x``, ``input``, ``inputs``, ``image``, ``images``, ``pixel_values``) and a target key
    (``y``, ``label``, ``labels``, ``target``, ``targets``).

    Raises:
        ProbeError: another format, a non-tensor input, or targets that are not one integer
            class label per example (floating-point regression targets, one-hot rows).
    """
    if isinstance(batch, Mapping):
        in_key = next((k for k in _INPUT_KEYS if k in batch), None)
        out_key = next((k for k in _TARGET_KEYS if k in batch), None)
        if in_key is None or out_key is None:
            raise ProbeError(
                f"a dict batch needs an input key {_INPUT_KEYS} and a target key {_TARGET_KEYS}; "
                f"got keys {sorted(map(str, batch))}: pass a ProbeSet instead")
        inputs, targets = batch[in_key], batch[out_key]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        inputs, targets = batch[0], batch[1]
    else:
        raise ProbeError(f"cannot read (inputs, targets) from a batch of type "
                         f"{type(batch).__name__}: pass a ProbeSet instead")
    if not isinstance(inputs, torch.Tensor):
        raise ProbeError(f"batch inputs of type {type(inputs).__name__} are not a tensor: pass "
                         "a ProbeSet instead")
    try:
        targets = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ProbeError(f"batch targets are not a tensor ({error})") from error
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ProbeError(f"targets of dtype {targets.dtype} are not integer class labels (a "
                         "regression task?)")
    if targets.dim() > 1 and not (targets.dim() == 2 and targets.shape[1] == 1):
        raise ProbeError(f"targets of shape {tuple(targets.shape)} are not one class label per "
                         "example (one-hot or multi-label targets?)")
    targets = targets.reshape(-1)
    if targets.numel() != inputs.shape[0]:
        raise ProbeError(f"{targets.numel()} targets for {inputs.shape[0]} inputs")
    return inputs, targets.to(torch.int64)


def probe_from_loader(
    loader: Iterable[Any], size: int = 256, seed: int = 0, max_batches: int | None = None
) -> ProbeSet:
    """A class-stratified probe from a loader's batches (:meth:`ProbeSet.from_dataloader`,
    with the batch formats of :func:`split_batch`). ``indices`` are positions in the loader's
    iteration order.

    Raises:
        ProbeError: unreadable batches, non-class targets, or no example at all.
    """
    probe = ProbeSet.from_dataloader(_normalised(loader), size, seed, max_batches)
    if len(probe) == 0:
        raise ProbeError("the loader yielded no example")
    if int(probe.labels.min()) < 0:
        raise ProbeError("targets hold negative class labels")
    return probe


def probe_at_positions(
    loader: Iterable[Any], positions: Sequence[int], labels: Sequence[int]
) -> ProbeSet:
    """The probe at ``positions`` of the loader's iteration order, checked against the
    ``labels`` recorded when it was chosen (a resumed run sees the same images).

    Raises:
        ProbeError: the loader is shorter or its labels differ (the data changed).
    """
    wanted = {int(p): i for i, p in enumerate(positions)}
    inputs: list[torch.Tensor | None] = [None] * len(wanted)
    found: list[int] = [0] * len(wanted)
    position, remaining = 0, len(wanted)
    for batch in _normalised(loader):
        x, y = batch
        for j in range(y.numel()):
            slot = wanted.get(position + j)
            if slot is not None:
                inputs[slot] = x[j].detach().to("cpu")
                found[slot] = int(y[j])
                remaining -= 1
        position += y.numel()
        if remaining == 0:
            break
    if remaining:
        raise ProbeError(f"the loader holds {position} examples; {remaining} probe positions "
                         "are beyond its end")
    if found != [int(v) for v in labels]:
        raise ProbeError("the labels at the recorded probe positions differ from those recorded")
    return ProbeSet(torch.stack(inputs), torch.tensor(found, dtype=torch.int64),  # type: ignore[arg-type]
                    torch.tensor([int(p) for p in positions], dtype=torch.int64))


def _normalised(loader: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        yield split_batch(batch)


__all__ = [
    "CLASS_MODE",
    "ClassAnalysisConfig",
    "ClassRecord",
    "ClassReport",
    "ClassTracker",
    "ProbeError",
    "analyze_classes",
    "class_records",
    "frozen_forward",
    "probe_at_positions",
    "probe_from_loader",
    "split_batch",
]
