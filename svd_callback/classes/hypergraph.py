"""Class-overlap hypergraph of SVD-neurons (docs/methods.md#class-statistics).

Nodes are the SVD-neurons of a layer (by decreasing sigma). The hyperedge e_c of class c holds
the neurons that are DeepDataProfiler-influential (:func:`influential_neurons`) in at least the
fraction q of class c's probe images (:func:`influential_hyperedges`, the default), or, as the
named alternative ``mean_share``, the top-k neurons carrying most of class c's mean signal
a_{c,i} (:func:`class_hyperedges`). Overlapping hyperedges mean classes that share neurons; a
neuron in exactly one hyperedge is class-specific.

The statistics are computed here with dense incidence matrices (classes x neurons is small);
:func:`to_hypernetx` builds the same hypergraph as a ``hypernetx.Hypergraph`` (checked to agree
with HyperNetX 2.4's degree, dual and s-component routines in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from svd_callback.classes.signals import ClassMeans

Edges = dict[int, frozenset[int]]


def influential_hyperedges(
    influential: torch.Tensor, labels: torch.Tensor, num_classes: int, q: float = 0.5
) -> Edges:
    """e_c = {i : #{x in class c : neuron i influential for x} >= q * #{x in class c}}.

    Args:
        influential: (I, n) bool, :func:`influential_neurons` of the probe images.
        labels: (I,) integer class labels (labels outside [0, num_classes) are ignored).
        num_classes: C.
        q: the fraction of a class's images in which a neuron must be influential, in (0, 1].

    Classes without probe images and classes whose edge would be empty get no hyperedge.

    Raises:
        ValueError: ``q`` outside (0, 1] or mismatched shapes.
    """
    if not 0.0 < float(q) <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    if influential.dim() != 2 or influential.shape[0] != labels.numel():
        raise ValueError(f"influential {tuple(influential.shape)} does not match "
                         f"{labels.numel()} labels")
    labels = labels.detach().to(device="cpu", dtype=torch.int64).reshape(-1)
    flags = influential.detach().to(device="cpu", dtype=torch.float64)
    valid = (labels >= 0) & (labels < num_classes)
    one_hot = torch.nn.functional.one_hot(labels[valid], num_classes).to(torch.float64)
    hits = one_hot.T @ flags[valid]  # (C, n) images of class c where neuron i is influential
    counts = one_hot.sum(dim=0)
    edges: Edges = {}
    for c in range(num_classes):
        if counts[c] == 0:
            continue
        # Integer comparison: hits >= q * count up to rounding of the product.
        members = torch.nonzero(hits[c] >= float(q) * counts[c] * (1 - 1e-12)).flatten()
        if members.numel():
            edges[c] = frozenset(members.tolist())
    return edges


def class_hyperedges(
    class_means: ClassMeans | torch.Tensor, m: int | None = None, tau: float | None = None
) -> Edges:
    """Hyperedge e_c of every class with a finite, non-zero row of a_{c,i}.

    Exactly one rule applies (``tau = 0.5`` when neither is given):

    - ``m``: the m neurons with the largest a_{c,i} (ties broken by lower neuron index);
    - ``tau``: the smallest prefix of the neurons sorted by decreasing a_{c,i} whose sum reaches
      the fraction ``tau`` of the class's total sum_i a_{c,i}.

    Classes whose row is NaN (absent from the probe), non-finite or all zero get no hyperedge.

    Raises:
        ValueError: both ``m`` and ``tau`` given, ``m < 1`` or ``tau`` outside (0, 1].
    """
    if m is not None and tau is not None:
        raise ValueError("give either m or tau, not both")
    if m is None and tau is None:
        tau = 0.5
    if m is not None and m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if tau is not None and not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    values = class_means.values if isinstance(class_means, ClassMeans) else class_means
    values = values.detach().to(device="cpu", dtype=torch.float64)
    usable = torch.isfinite(values).all(dim=1) & (values.abs().sum(dim=1) > 0)
    sorted_values, order = torch.sort(values.nan_to_num(0.0), dim=1, descending=True, stable=True)
    if m is not None:
        sizes = torch.full((values.shape[0],), min(m, values.shape[1]), dtype=torch.int64)
    else:
        cumulative = torch.cumsum(sorted_values, dim=1)
        total = cumulative[:, -1:]
        # Relative slack so that a prefix reaching tau up to rounding counts as reaching it.
        reached = cumulative >= tau * total * (1 - 1e-9)
        sizes = reached.to(torch.int64).argmax(dim=1) + 1
    order_list, sizes_list = order.tolist(), sizes.tolist()
    return {
        c: frozenset(order_list[c][: sizes_list[c]])
        for c in range(values.shape[0])
        if bool(usable[c])
    }


@dataclass
class HypergraphStats:
    """Statistics of one class-overlap hypergraph.

    Attributes:
        scalars: name -> value (NaN where undefined, see ``notes``):
            ``n_edges``; ``jaccard_mean`` / ``jaccard_max`` over class pairs a < b;
            ``class_specific_fraction`` = #{nodes of degree 1} / #{nodes of degree >= 1};
            ``class_specific_fraction_all`` = #{nodes of degree 1} / n_nodes;
            ``degree_mean`` = mean degree of the nodes of degree >= 1 (``degree_mean_all``: over
            all n_nodes); ``s_components_{1,2,3}`` = number of s-edge-connected components
            (classes joined when their edges share >= s neurons; every edge counts, an isolated
            one is its own component, as HyperNetX's ``s_components(s, edges=True)``);
            ``dual_s_components_{1,2,3}`` = the same for the dual (neurons joined when they share
            >= s classes; over the nodes of degree >= 1); ``edge_stability_mean`` = mean over the
            classes present in both epochs of J(e_c, e_c previous).
        classes: class ids of the edges, ascending (rows/columns of ``jaccard_matrix``).
        jaccard_matrix: (E, E) float64 pairwise Jaccard |e_a ∩ e_b| / |e_a ∪ e_b|.
        degree: (n_nodes,) number of edges holding each node.
        edge_stability: class -> J(e_c, previous e_c).
        notes: stat -> why it is NaN.
    """

    scalars: dict[str, float]
    classes: list[int]
    jaccard_matrix: torch.Tensor
    degree: torch.Tensor
    edge_stability: dict[int, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def incidence_matrix(edges: Mapping[int, frozenset[int]], n_nodes: int) -> torch.Tensor:
    """(n_nodes, E) 0/1 float64 matrix, columns in ascending class order."""
    classes = sorted(edges)
    incidence = torch.zeros(n_nodes, len(classes), dtype=torch.float64)
    for column, c in enumerate(classes):
        members = list(edges[c])
        if members and (min(members) < 0 or max(members) >= n_nodes):
            raise ValueError(f"edge of class {c} has nodes outside [0, {n_nodes})")
        incidence[members, column] = 1.0
    return incidence


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    """|a ∩ b| / |a ∪ b|; NaN for two empty sets."""
    union = len(a | b)
    return len(a & b) / union if union else math.nan


def hypergraph_stats(
    edges: Mapping[int, frozenset[int]],
    n_nodes: int,
    previous_edges: Mapping[int, frozenset[int]] | None = None,
) -> HypergraphStats:
    """Overlap, specificity, connectivity and stability of a class-overlap hypergraph."""
    classes = sorted(edges)
    incidence = incidence_matrix(edges, n_nodes)
    sizes = incidence.sum(dim=0)
    intersections = incidence.T @ incidence
    unions = sizes[:, None] + sizes[None, :] - intersections
    jaccard_matrix = torch.where(unions > 0, intersections / unions.clamp_min(1), math.nan)
    degree = incidence.sum(dim=1)
    covered = degree > 0
    notes: dict[str, str] = {}
    scalars: dict[str, float] = {"n_edges": float(len(classes))}

    upper = torch.triu_indices(len(classes), len(classes), offset=1)
    pairs = jaccard_matrix[upper[0], upper[1]]
    if pairs.numel():
        scalars["jaccard_mean"] = float(pairs.mean())
        scalars["jaccard_max"] = float(pairs.max())
    else:
        scalars["jaccard_mean"] = scalars["jaccard_max"] = math.nan
        notes["jaccard_mean"] = notes["jaccard_max"] = "fewer than two class hyperedges"

    n_covered = int(covered.sum())
    n_specific = int((degree == 1).sum())
    if n_covered:
        scalars["class_specific_fraction"] = n_specific / n_covered
        scalars["degree_mean"] = float(degree[covered].mean())
    else:
        scalars["class_specific_fraction"] = scalars["degree_mean"] = math.nan
        notes["class_specific_fraction"] = notes["degree_mean"] = "no node lies in any hyperedge"
    if n_nodes > 0:
        scalars["class_specific_fraction_all"] = n_specific / n_nodes
        scalars["degree_mean_all"] = float(degree.sum()) / n_nodes
    else:
        scalars["class_specific_fraction_all"] = scalars["degree_mean_all"] = math.nan
        notes["class_specific_fraction_all"] = notes["degree_mean_all"] = "no nodes"

    node_overlaps = incidence[covered] @ incidence[covered].T
    for s in (1, 2, 3):
        scalars[f"s_components_{s}"] = float(_count_components(intersections, s))
        scalars[f"dual_s_components_{s}"] = float(_count_components(node_overlaps, s))

    stability: dict[int, float] = {}
    if previous_edges is not None:
        stability = {
            c: jaccard(edges[c], previous_edges[c]) for c in classes if c in previous_edges
        }
    finite = [v for v in stability.values() if not math.isnan(v)]
    scalars["edge_stability_mean"] = float(np.mean(finite)) if finite else math.nan
    if not finite:
        notes["edge_stability_mean"] = (
            "no previous hyperedges" if previous_edges is None else "no class in both epochs"
        )
    return HypergraphStats(scalars, classes, jaccard_matrix, degree, stability, notes)


def _count_components(overlaps: torch.Tensor, s: int) -> int:
    """Connected components of the graph joining i != j when overlaps[i, j] >= s."""
    n = overlaps.shape[0]
    if n == 0:
        return 0
    from scipy.sparse import csr_matrix  # scipy.sparse, loaded here: ~0.2 s at import
    from scipy.sparse.csgraph import connected_components

    adjacency = (overlaps >= s).numpy().copy()
    np.fill_diagonal(adjacency, False)
    count, _ = connected_components(csr_matrix(adjacency), directed=False)
    return int(count)


def to_hypernetx(edges: Mapping[int, frozenset[int]]) -> Any:
    """The hypergraph as a ``hypernetx.Hypergraph`` (edge ids = class ids, nodes = neuron ids).

    Empty hyperedges are left out (HyperNetX stores incidences, so an empty edge cannot exist).
    """
    import hypernetx as hnx

    return hnx.Hypergraph({int(c): sorted(int(i) for i in e) for c, e in edges.items() if e})
