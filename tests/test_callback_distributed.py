"""The distributed work split (greedy LPT) against a brute-force optimum, and the gather helper
outside a process group."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from svd_callback.distributed import gather_reports, is_distributed, split_work
from svd_callback.layers import estimate_cost, find_layers
from svd_callback.report import LayerReport, Report

costs_strategy = st.dictionaries(
    st.text("abcdefgh.", min_size=1, max_size=6),
    st.floats(0.0, 1e6, allow_nan=False),
    min_size=0,
    max_size=9,
)


def optimal_makespan(costs: dict[str, float], world: int) -> float:
    """Exhaustive search over every assignment of names to ranks."""
    values = list(costs.values())
    best = float("inf")
    for assignment in itertools.product(range(world), repeat=len(values)):
        loads = [0.0] * world
        for value, rank in zip(values, assignment, strict=True):
            loads[rank] += value
        best = min(best, max(loads))
    return best if values else 0.0


@given(costs_strategy, st.integers(1, 3))
@settings(max_examples=80, deadline=None)
def test_split_assigns_every_layer_once_in_model_order(costs, world):
    shares = split_work(costs, world)
    assert len(shares) == world
    flat = [name for share in shares for name in share]
    assert sorted(flat) == sorted(costs)
    order = list(costs)
    for share in shares:
        assert share == sorted(share, key=order.index)
    assert shares == split_work(dict(costs), world)  # every rank computes the same split


@given(costs_strategy.filter(lambda c: len(c) <= 7), st.integers(2, 3))
@settings(max_examples=60, deadline=None)
def test_split_is_within_grahams_bound_of_the_optimum(costs, world):
    shares = split_work(costs, world)
    makespan = max(sum(costs[n] for n in share) for share in shares)
    bound = (4 / 3 - 1 / (3 * world)) * optimal_makespan(costs, world)
    assert makespan <= bound * (1 + 1e-12) + 1e-9


def test_split_balances_a_real_model_by_estimated_cost():
    from torchvision.models import resnet18

    specs, _ = find_layers(resnet18(num_classes=10))
    costs = {s.name: estimate_cost(s, "unfold") for s in specs}
    shares = split_work(costs, 2)
    loads = [sum(costs[n] for n in share) for share in shares]
    assert max(loads) / min(loads) < 1.1
    assert max(loads) <= optimal_lower_bound(costs, 2) * 4 / 3


def optimal_lower_bound(costs: dict[str, float], world: int) -> float:
    return max(max(costs.values()), sum(costs.values()) / world)


def test_split_rejects_a_bad_world_size():
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        split_work({"a": 1.0}, 0)


def test_gather_without_a_process_group_returns_the_report_itself():
    report = Report([LayerReport("fc", "linear", "unfold", svals=torch.ones(3))])
    assert not is_distributed(2)
    assert gather_reports(report, 2, ["fc"], ["unfold"]) is report
    assert gather_reports(report, 1) is report
