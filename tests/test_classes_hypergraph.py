"""Class-overlap hypergraph: hand-built answers and agreement with HyperNetX's own routines."""

from __future__ import annotations

import math

import hypernetx as hnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svd_callback.classes import (
    ClassMeans,
    class_hyperedges,
    class_mean_signals,
    hypergraph_stats,
    to_hypernetx,
)


def _block_means(blocks: list[list[int]], n_nodes: int) -> torch.Tensor:
    """a_{c,i} = 1 on class c's planted neurons, 0.01 elsewhere."""
    means = torch.full((len(blocks), n_nodes), 0.01)
    for c, nodes in enumerate(blocks):
        means[c, nodes] = 1.0
    return means


def test_disjoint_classes_have_zero_overlap_and_specific_nodes():
    means = _block_means([[0, 1, 2], [3, 4, 5], [6, 7, 8]], n_nodes=12)
    edges = class_hyperedges(means, m=3)
    assert edges == {0: frozenset({0, 1, 2}), 1: frozenset({3, 4, 5}), 2: frozenset({6, 7, 8})}
    stats = hypergraph_stats(edges, n_nodes=12)
    assert stats.scalars["jaccard_mean"] == 0.0
    assert stats.scalars["jaccard_max"] == 0.0
    assert stats.scalars["class_specific_fraction"] == 1.0
    assert stats.scalars["class_specific_fraction_all"] == pytest.approx(9 / 12)
    assert stats.scalars["degree_mean"] == 1.0
    assert stats.scalars["degree_mean_all"] == pytest.approx(9 / 12)
    for s in (1, 2, 3):
        assert stats.scalars[f"s_components_{s}"] == 3.0
    assert stats.scalars["dual_s_components_1"] == 3.0
    assert stats.scalars["dual_s_components_2"] == 9.0  # no two neurons share 2 classes


def test_identical_classes_have_full_overlap():
    means = _block_means([[1, 4, 6], [1, 4, 6], [1, 4, 6]], n_nodes=8)
    stats = hypergraph_stats(class_hyperedges(means, m=3), n_nodes=8)
    assert stats.scalars["jaccard_mean"] == 1.0
    assert stats.scalars["jaccard_max"] == 1.0
    assert stats.scalars["class_specific_fraction"] == 0.0
    assert stats.scalars["degree_mean"] == 3.0
    assert stats.scalars["s_components_3"] == 1.0
    assert torch.equal(stats.jaccard_matrix, torch.ones(3, 3, dtype=torch.float64))


def test_planted_partial_overlap():
    # e0 = {0,1,2,3}, e1 = {2,3,4,5}, e2 = {5,6,7,8}
    # J01 = 2/6, J02 = 0/8, J12 = 1/7; degree-1 nodes: 0,1,4,6,7,8 of 9 covered.
    means = _block_means([[0, 1, 2, 3], [2, 3, 4, 5], [5, 6, 7, 8]], n_nodes=10)
    edges = class_hyperedges(means, m=4)
    stats = hypergraph_stats(edges, n_nodes=10)
    expected = torch.tensor(
        [[1.0, 2 / 6, 0.0], [2 / 6, 1.0, 1 / 7], [0.0, 1 / 7, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(stats.jaccard_matrix, expected)
    assert stats.scalars["jaccard_mean"] == pytest.approx((2 / 6 + 0 + 1 / 7) / 3)
    assert stats.scalars["jaccard_max"] == pytest.approx(2 / 6)
    assert stats.scalars["class_specific_fraction"] == pytest.approx(6 / 9)
    assert stats.scalars["class_specific_fraction_all"] == pytest.approx(6 / 10)
    assert stats.scalars["degree_mean"] == pytest.approx(12 / 9)
    assert stats.scalars["s_components_1"] == 1.0  # 0-1 share 2 nodes, 1-2 share 1
    assert stats.scalars["s_components_2"] == 2.0  # {0, 1}, {2}
    assert stats.scalars["s_components_3"] == 3.0
    assert stats.degree.tolist() == [1, 1, 2, 2, 1, 2, 1, 1, 1, 0]


def test_tau_rule_takes_the_smallest_prefix_reaching_the_mass():
    means = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    # class 0: cumulative shares 0.4, 0.7, 0.9, 1.0; class 1: 0.25, 0.5, ...
    assert class_hyperedges(means, tau=0.5) == {0: frozenset({0, 1}), 1: frozenset({0, 1})}
    assert class_hyperedges(means, tau=0.4) == {0: frozenset({0}), 1: frozenset({0, 1})}
    assert class_hyperedges(means, tau=1.0)[0] == frozenset({0, 1, 2, 3})
    with pytest.raises(ValueError):
        class_hyperedges(means, m=2, tau=0.5)


def test_edge_stability_against_previous_epoch():
    current = {0: frozenset({0, 1, 2}), 1: frozenset({3, 4}), 2: frozenset({5})}
    previous = {0: frozenset({0, 1, 3}), 1: frozenset({3, 4}), 3: frozenset({7})}
    stats = hypergraph_stats(current, n_nodes=8, previous_edges=previous)
    assert stats.edge_stability == {0: pytest.approx(2 / 4), 1: 1.0}
    assert stats.scalars["edge_stability_mean"] == pytest.approx(0.75)
    first = hypergraph_stats(current, n_nodes=8)
    assert math.isnan(first.scalars["edge_stability_mean"])
    assert "edge_stability_mean" in first.notes


def test_class_absent_from_probe_gets_nan_row_and_no_edge():
    signals = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -0.5], [0.0, 1.0, 1.0]])
    labels = torch.tensor([0, 0, 2])
    means = class_mean_signals(signals, labels, num_classes=3)
    torch.testing.assert_close(means.values[0], torch.tensor([2.0, 1.0, 0.5]))
    assert torch.isnan(means.values[1]).all()
    assert "absent" in means.reasons[1]
    assert means.counts.tolist() == [2, 0, 1]
    edges = class_hyperedges(means, m=1)
    assert sorted(edges) == [0, 2]
    stats = hypergraph_stats(edges, n_nodes=3)
    assert stats.classes == [0, 2]


def test_single_class_gives_nan_overlap_with_a_note():
    stats = hypergraph_stats({4: frozenset({0, 1})}, n_nodes=5)
    assert math.isnan(stats.scalars["jaccard_mean"])
    assert "fewer than two" in stats.notes["jaccard_mean"]
    assert stats.scalars["s_components_1"] == 1.0


edge_sets = st.dictionaries(
    keys=st.integers(0, 9),
    values=st.frozensets(st.integers(0, 11), min_size=1, max_size=8),
    min_size=1,
    max_size=6,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edges=edge_sets)
def test_statistics_agree_with_hypernetx(edges):
    stats = hypergraph_stats(edges, n_nodes=12)
    hg = to_hypernetx(edges)
    assert isinstance(hg, hnx.Hypergraph)
    # Degrees: HyperNetX's degree and the sizes of the dual's edges.
    dual = hg.dual()
    for node in hg.nodes:
        assert stats.degree[node] == hg.degree(node)
        assert stats.degree[node] == len(dual.edges[node])
    assert int((stats.degree > 0).sum()) == len(hg.nodes)
    # Jaccard from HyperNetX's own edge memberships.
    for a_pos, a in enumerate(stats.classes):
        for b_pos, b in enumerate(stats.classes):
            ea, eb = set(hg.edges[a]), set(hg.edges[b])
            assert stats.jaccard_matrix[a_pos, b_pos] == pytest.approx(len(ea & eb) / len(ea | eb))
    for s in (1, 2, 3):
        edge_components = list(hg.s_components(s=s, edges=True, return_singletons=True))
        node_components = list(hg.s_components(s=s, edges=False, return_singletons=True))
        assert stats.scalars[f"s_components_{s}"] == len(edge_components)
        assert stats.scalars[f"dual_s_components_{s}"] == len(node_components)


def test_hyperedges_accept_class_means_dataclass():
    values = torch.tensor([[0.1, 0.9, 0.3], [math.nan, math.nan, math.nan]])
    means = ClassMeans(values, torch.tensor([2, 0]), {1: "class absent from the probe set"})
    assert class_hyperedges(means, m=2) == {0: frozenset({1, 2})}
