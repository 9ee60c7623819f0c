"""The class-level analysis of one model on one probe set (docs/methods.md#class-statistics).

:func:`analyze_classes` makes one forward pass over a fixed :class:`ProbeSet` and, per analysed
layer, reduces what the layer receives on the fly (nothing bigger than an (I, k) matrix is kept
per layer, so every conv and linear layer of a large network can be watched):

1. SVD-neuron signals s_i = sigma_i <v_i, mean_p x_p> of every neuron of the layer (unfold SVD,
   :func:`neuron_signals`; the top-k only under ``edge_rule="mean_share"``);
2. the class hyperedges e_c: the neurons DeepDataProfiler-influential (:func:`influential_neurons`)
   in at least the fraction ``q`` of class c's images, or (``edge_rule="mean_share"``, statistics
   suffixed ``_mean_share``) the neurons holding the share ``tau`` of a_{c,.} = mean |s_.|, or
   the top ``m``; the hypergraph statistics against the previous analysis's edges
   (:func:`hypergraph_stats`), the class x class Jaccard matrix and, per class, the number of its
   class-specific neurons (nodes of e_c in no other edge) and how many of the previous
   analysis's ones it kept;
3. at the penultimate layer (the input of the classifier head, :func:`find_penultimate_layer`),
   Badola et al.'s class-specific feature sets S_c, |S_c| / D per class and the functional test
   of S_c through the head (:func:`functional_test`);
4. optionally, the non-negative CP factorization rank of chosen layers' rectified outputs
   (:func:`factorization_rank`; off by default, its cost in
   docs/methods.md#measurements-behind-the-choices).

Neurons keep their identity across analyses by their singular vectors (:func:`match_neurons`,
Hungarian assignment on the |cosine| of the rank-one components), not by the rank of their
singular value: the previous analysis's edges are carried over to the matched current neurons
before the stability Jaccards and the kept specific neurons are counted, and the mean matched
|cosine| is logged as ``neuron_match_cosine``.

The forward pass never changes the model: it runs under ``torch.no_grad()`` with every module in
eval mode (batch-norm uses its running statistics and updates nothing, dropout is off) inside a
forked random generator, and each module's own ``training`` flag and every buffer (the observers
of quantization-aware training update even in eval mode) are restored afterwards
(:func:`frozen_forward`). The statistics therefore describe the network as it would be
evaluated. Bad input never raises: an empty probe, non-integer targets, a missing penultimate
layer, a layer that cannot be read or a failing forward pass each leave NaN statistics and a
reason in :attr:`ClassReport.reasons`, and the rest of the analysis still runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from svd_callback.classes.config import ClassAnalysisConfig
from svd_callback.classes.factorization import FactorizationResult, factorization_rank
from svd_callback.classes.features import (
    class_specific_features,
    find_penultimate_layer,
    pool_features,
)
from svd_callback.classes.functional import functional_test
from svd_callback.classes.hypergraph import (
    Edges,
    class_hyperedges,
    hypergraph_stats,
    influential_hyperedges,
)
from svd_callback.classes.identity import match_neurons
from svd_callback.classes.probe import (
    ProbeError,
    ProbeSet,
    first_tensor,
    probe_at_positions,
    probe_from_loader,
    split_batch,
)
from svd_callback.classes.report import ClassReport, ClassTracker, Part, Where
from svd_callback.classes.sharded import ProbeSplit, merge_captured
from svd_callback.classes.signals import (
    class_mean_signals,
    influential_neurons,
    neuron_signals,
)
from svd_callback.layers import frozen_forward, has_weight, named_modules, read_weight
from svd_callback.sharding import full_weight

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
ANALYSIS, PROBE, FORWARD = Where(Part.ANALYSIS), Where(Part.PROBE), Where(Part.FORWARD)
FEATURES, FUNCTIONAL = Where(Part.FEATURES), Where(Part.FUNCTIONAL)
_FACTORIZATION_IMAGES = 64
"""Images kept per factorization layer (``factorization_rank``'s default ``max_images``)."""


def analyze_classes(
    model: nn.Module,
    probe: ProbeSet,
    config: ClassAnalysisConfig | None = None,
    *,
    layers: Sequence[str] | None = None,
    tracker: ClassTracker | None = None,
    factorize: bool | None = None,
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
    split: ProbeSplit | None = None,
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
        split: on a sharded model, this rank's share of the probe forward pass (collectives
            inside: every rank calls this with the same probe, see
            :mod:`svd_callback.classes.sharded`); None: the whole probe in this process.

    Returns:
        A :class:`ClassReport`; never raises for bad input (see its ``reasons``).
    """
    started = time.perf_counter()
    config = config or ClassAnalysisConfig()
    report = ClassReport()
    try:
        _analyze(model, probe, config, layers, tracker, factorize, report, forward, split)
    except Exception as error:  # noqa: BLE001 - bad input becomes a reason, never an exception
        report.reasons[ANALYSIS] = f"class analysis failed: {type(error).__name__}: {error}"
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
    split: ProbeSplit | None = None,
) -> None:
    labels, reason = _probe_labels(probe)
    if reason is not None:
        report.reasons[PROBE] = reason
        return
    modules = dict(named_modules(model))
    signal_layers = _signal_layers(model, modules, config, layers, report)
    feature_layer = _feature_layer(model, modules, config, report)
    due = factorize
    if due is None:
        count = tracker.analyses if tracker is not None else 0
        due = bool(config.factorization_every_n) and count % config.factorization_every_n == 0
    factor_layers = _factorization_layers(modules, config, signal_layers, report) if due else []

    num_classes = int(labels.max()) + 1  # from the labels, never from the model's modules
    if config.num_classes is not None:
        if num_classes > config.num_classes:
            report.reasons[PROBE] = (f"probe label {num_classes - 1} >= num_classes = "
                                       f"{config.num_classes}: no class statistics")
            return
        num_classes = config.num_classes
    report.num_classes = num_classes
    report.class_counts = torch.bincount(labels, minlength=num_classes)
    for c in torch.nonzero(report.class_counts == 0).flatten().tolist():
        report.reasons[Where(Part.CLASS, c)] = "class absent from the probe set"

    inputs, real = (probe.inputs, len(probe.inputs)) if split is None else split.slice(
        probe.inputs)
    captured = _capture(model, inputs, modules, signal_layers, feature_layer,
                        factor_layers, config, forward)
    if split is not None:  # every rank, also after a failed forward: no rank waits forever
        merge_captured(captured, split, real)
        captured.outputs = {n: [torch.cat(p)[:_FACTORIZATION_IMAGES]]
                            for n, p in captured.outputs.items()}
    if FORWARD in captured.errors:
        report.reasons[PROBE] = captured.errors[FORWARD]
        for name in signal_layers:
            report.layers.setdefault(name, {})
        return
    for name in signal_layers:
        _hypergraph_of_layer(name, captured, labels, config, tracker, report)
    if feature_layer is not None:
        _features(feature_layer, modules[feature_layer], captured, labels, config, tracker,
                  report)
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
        names = [n for n, m in named_modules(model) if isinstance(m, (nn.Linear, *_CONV_TYPES))]
    kept = []
    for name in names:
        module = modules.get(name)
        if module is None:
            report.reasons[Where.layer(name)] = "no module of this name in the model"
            report.layers[name] = {}
        elif not has_weight(module):
            report.reasons[Where.layer(name)] = f"{type(module).__name__} has no weight tensor"
            report.layers[name] = {}
        else:
            kept.append(name)
    return kept


def _feature_layer(
    model: nn.Module, modules: dict[str, nn.Module], config: ClassAnalysisConfig,
    report: ClassReport,
) -> str | None:
    if config.feature_layer is not None:
        if config.feature_layer not in modules:
            report.reasons[FEATURES] = f"feature_layer {config.feature_layer!r} not found"
            return None
        name = config.feature_layer
    else:
        name, reason = find_penultimate_layer(model)
        if name is None:
            report.reasons[FEATURES] = f"penultimate layer not found: {reason}"
            return None
    report.feature_layer = name
    return name


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
                report.reasons[Where.factorization(name)] = "no module of this name in the model"
        return names
    convs = [n for n in signal_layers if isinstance(modules[n], _CONV_TYPES)]
    if not convs:
        report.reasons[Where.factorization()] = "no conv layer analysed: give factorization_layers"
        return []
    return convs[-1:]


@dataclass
class _Captured:
    signals: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    sigma: dict[str, torch.Tensor] = field(default_factory=dict)
    neuron: dict[str, torch.Tensor] = field(default_factory=dict)
    basis: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    features: list[torch.Tensor] = field(default_factory=list)
    outputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    errors: dict[Where, str] = field(default_factory=dict)


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
    factorization) the first outputs (:class:`_Recorder`). A hook that fails records an error
    for its layer only; a forward pass that fails, under :data:`FORWARD`."""
    recorder = _Recorder(config, factor_layers)
    handles = [modules[n].register_forward_hook(recorder.signal_hook(n, modules[n]))
               for n in signal_layers]
    if feature_layer is not None:
        handles.append(modules[feature_layer].register_forward_hook(recorder.feature_hook))
    handles += [modules[n].register_forward_hook(recorder.output_hook(n)) for n in factor_layers]
    try:
        _probe_forward(model, inputs, config.batch_size, forward, recorder.next_batch)
    except Exception as error:  # noqa: BLE001 - a model that rejects the probe
        recorder.out.errors[FORWARD] = (f"probe forward pass failed: {type(error).__name__}: "
                                        f"{error}")
    finally:
        for handle in handles:
            handle.remove()
    return recorder.out


def _probe_forward(
    model: nn.Module,
    inputs: torch.Tensor,
    batch_size: int,
    forward: Callable[[nn.Module, torch.Tensor], Any] | None,
    next_batch: Callable[[], None],
) -> None:
    """The model in eval mode (:func:`frozen_forward`) on ``inputs`` in chunks of
    ``batch_size``, each moved to the model's device and floating dtype; ``next_batch`` is
    called before each chunk."""
    parameter = next(model.parameters(), None)
    with frozen_forward(model):
        for start in range(0, len(inputs), batch_size):
            next_batch()
            batch = inputs[start : start + batch_size]
            if parameter is not None:
                dtype = parameter.dtype if (
                    batch.is_floating_point() and parameter.is_floating_point()
                ) else batch.dtype
                batch = batch.to(device=parameter.device, dtype=dtype)
            if forward is None:
                model(batch)
            else:
                forward(model, batch)


class _Recorder:
    """The forward hooks of one probe pass and what they keep (:attr:`out`): each hook records
    once per batch (a module called twice in one forward counts once) and an error under its
    own :class:`Where`."""

    def __init__(self, config: ClassAnalysisConfig, factor_layers: Sequence[str]) -> None:
        self.config = config
        self.out = _Captured()
        self.seen: set[tuple[str, str]] = set()  # (role, layer) recorded in the current batch
        self.kept_outputs: dict[str, int] = dict.fromkeys(factor_layers, 0)

    def next_batch(self) -> None:
        self.seen.clear()

    def _first(self, role: str, name: str) -> bool:
        """Whether (role, name) has not recorded in this batch yet (and mark it)."""
        if (role, name) in self.seen:
            return False
        self.seen.add((role, name))
        return True

    def signal_hook(self, name: str, module: nn.Module) -> Callable[..., None]:
        """Neuron signals of layer ``name`` (:func:`neuron_signals`)."""
        out, where = self.out, Where.layer(name)
        params = None if isinstance(module, nn.Linear) else module  # other kinds: a reason
        top_k = self.config.top_k if self.config.edge_rule == "mean_share" else None

        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            if not self._first("signal", name):
                return
            try:  # a sharded weight is gathered on every rank, before any per-rank return
                weight = full_weight(read_weight(mod))
            except Exception as error:  # noqa: BLE001
                out.errors.setdefault(where, f"{type(error).__name__}: {error}")
                return
            if where in out.errors:
                return
            try:
                signals = neuron_signals(weight, first_tensor(args), params, top_k,
                                         return_basis=name not in out.basis)
            except Exception as error:  # noqa: BLE001
                out.errors[where] = f"{type(error).__name__}: {error}"
                return
            out.signals.setdefault(name, []).append(signals.values)
            out.sigma.setdefault(name, signals.sigma)
            out.neuron.setdefault(name, signals.neuron.detach().cpu())
            if signals.basis is not None:
                out.basis[name] = signals.basis
            if signals.reason is not None:
                out.errors.setdefault(where, signals.reason)

        return hook

    def feature_hook(self, mod: nn.Module, args: tuple, output: Any) -> None:
        """Pooled penultimate features (:func:`pool_features`)."""
        if FEATURES in self.out.errors or not self._first("feature", ""):
            return
        try:
            channel_dim = -1 if isinstance(mod, nn.Linear) else 1
            self.out.features.append(pool_features(first_tensor(args), channel_dim))
        except Exception as error:  # noqa: BLE001
            self.out.errors[FEATURES] = f"{type(error).__name__}: {error}"

    def output_hook(self, name: str) -> Callable[..., None]:
        """The first outputs of layer ``name`` for its factorization rank."""
        out, where = self.out, Where.factorization(name)

        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            if where in out.errors or not self._first("output", name):
                return
            room = _FACTORIZATION_IMAGES - self.kept_outputs[name]
            if room <= 0:
                return
            try:
                tensor = first_tensor(output)[:room].detach().clone()
            except Exception as error:  # noqa: BLE001
                out.errors[where] = f"{type(error).__name__}: {error}"
                return
            self.kept_outputs[name] += tensor.shape[0]
            out.outputs.setdefault(name, []).append(tensor)

        return hook


def _hypergraph_of_layer(
    name: str,
    captured: _Captured,
    labels: torch.Tensor,
    config: ClassAnalysisConfig,
    tracker: ClassTracker | None,
    report: ClassReport,
) -> None:
    num_classes = report.num_classes
    error = captured.errors.get(Where.layer(name))
    pieces = captured.signals.get(name)
    if pieces is None:
        report.reasons[Where.layer(name)] = error or "the layer was not called by the forward pass"
        report.layers[name] = {}
        return
    if error is not None:
        report.reasons[Where.layer(name)] = error
    values = torch.cat(pieces)
    n_nodes = int(values.shape[1])
    if config.edge_rule == "mean_share":
        means = class_mean_signals(values, labels.to(values.device), num_classes)
        report.notes.extend(f"{name}: {note}" for note in means.notes)
        edges = class_hyperedges(means, m=config.m, tau=config.tau)
    else:
        if not bool(torch.isfinite(values).all()):
            report.notes.append(f"{name}: images with non-finite signals have no influential "
                                "neuron")
        influential = influential_neurons(values, config.influence_threshold)
        edges = influential_hyperedges(influential, labels, num_classes, config.q)
    neuron = captured.neuron[name]
    report.neurons[name] = neuron
    if name in captured.basis:
        report.bases[name] = captured.basis[name]
    previous, match_cosine, match_reason = _carried_edges(name, neuron, captured, tracker)
    stats = hypergraph_stats(edges, n_nodes, previous)
    scalars = dict(stats.scalars)
    scalars["neuron_match_cosine"] = match_cosine
    if match_reason is not None:
        report.notes.append(f"{name}: {match_reason}")
    suffix = "" if config.edge_rule == "influential" else "_mean_share"
    report.layers[name] = {f"{stat}{suffix}": value for stat, value in scalars.items()}
    report.edges[name] = edges
    report.n_nodes[name] = n_nodes
    report.specific_retained[name] = _specific_retained(edges, previous, report.class_counts,
                                                        n_nodes)
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
    if not edges and Where.layer(name) not in report.reasons:
        report.reasons[Where.layer(name)] = "no class has a non-zero finite signal"


def _carried_edges(
    name: str, neuron: torch.Tensor, captured: _Captured, tracker: ClassTracker | None,
) -> tuple[Edges | None, float, str | None]:
    """The previous analysis's edges on the current nodes (neurons matched by their singular
    vectors), the mean matched |cosine| and why no match was made."""
    if tracker is None or name not in tracker.edges:
        return None, math.nan, None
    previous_basis = tracker.bases.get(name)
    previous_neuron = tracker.neurons.get(name)
    basis = captured.basis.get(name)
    if previous_basis is None or previous_neuron is None or basis is None:
        return None, math.nan, "no singular vectors of the previous analysis to match"
    match = match_neurons(previous_basis, basis)
    if match.reason is not None:
        return None, math.nan, match.reason
    node_of_flat = {int(f): node for node, f in enumerate(neuron.tolist())}
    previous_flat = previous_neuron.tolist()
    current_node = [node_of_flat.get(int(match.previous_to_current[int(f)]), -1)
                    if 0 <= int(f) < match.previous_to_current.numel() else -1
                    for f in previous_flat]
    carried = {
        c: frozenset(current_node[p] for p in edge if current_node[p] >= 0)
        for c, edge in tracker.edges[name].items()
    }
    return carried, match.mean_cosine, None


def _specific_retained(
    edges: Edges, previous: Edges | None, class_counts: torch.Tensor, n_nodes: int
) -> torch.Tensor:
    """(C,) per class: its class-specific neurons of the previous analysis (carried to the
    current nodes) that are class-specific to it now; NaN without a previous edge."""
    retained = torch.full((class_counts.numel(),), math.nan, dtype=torch.float64)
    if previous is None:
        return retained
    specific_now = _specific_sets(edges, n_nodes)
    specific_before = _specific_sets(previous, n_nodes)
    for c, before in specific_before.items():
        if c < retained.numel() and class_counts[c] > 0:
            retained[c] = float(len(before & specific_now.get(c, frozenset())))
    return retained


def _specific_sets(edges: Edges, n_nodes: int) -> dict[int, frozenset[int]]:
    degree = [0] * n_nodes
    for edge in edges.values():
        for i in edge:
            degree[i] += 1
    return {c: frozenset(i for i in edge if degree[i] == 1) for c, edge in edges.items()}


def _features(
    name: str,
    head: nn.Module,
    captured: _Captured,
    labels: torch.Tensor,
    config: ClassAnalysisConfig,
    tracker: ClassTracker | None,
    report: ClassReport,
) -> None:
    num_classes = report.num_classes
    report.feature_fraction = torch.full((num_classes,), math.nan, dtype=torch.float64)
    if FEATURES in captured.errors or not captured.features:
        report.reasons[FEATURES] = captured.errors.get(
            FEATURES, f"feature layer {name!r} was not called by the forward pass")
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
    _functional(head, features, labels, config, tracker, report, stats)


def _functional(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, config: ClassAnalysisConfig,
    tracker: ClassTracker | None, report: ClassReport, stats: dict[str, float],
) -> None:
    """Badola et al.'s functional test of the sets S_c through the head, and the same values
    of the tracker's first analysis (``_first``)."""
    keys = ("functional_acc_full", "functional_acc_specific", "functional_acc_random",
            "functional_gain")
    if not isinstance(head, nn.Linear) or not has_weight(head):
        stats.update(dict.fromkeys(keys, math.nan))
        report.reasons[FUNCTIONAL] = ("the feature layer is not an nn.Linear head: no "
                                        "functional test")
    else:
        try:
            bias = None if head.bias is None else full_weight(head.bias)
            stats.update(functional_test(features, labels, full_weight(read_weight(head)), bias,
                                         report.feature_sets, config.functional_draws,
                                         config.seed))
        except ValueError as error:
            stats.update(dict.fromkeys(keys, math.nan))
            report.reasons[FUNCTIONAL] = f"functional test failed: {error}"
    first = tracker.first_functional if tracker is not None else None
    first = first if first is not None else {k: stats[k] for k in keys}
    for key in ("functional_acc_specific", "functional_gain"):
        stats[f"{key}_first"] = float(first.get(key, math.nan))


def _factorize(
    name: str, captured: _Captured, config: ClassAnalysisConfig, report: ClassReport
) -> None:
    key = Where.factorization(name)
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


__all__ = [
    "ClassAnalysisConfig",
    "ClassReport",
    "ClassTracker",
    "ProbeError",
    "analyze_classes",
    "frozen_forward",
    "probe_at_positions",
    "probe_from_loader",
    "split_batch",
]
