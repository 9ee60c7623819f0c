"""The class probe split over ranks (``svd_callback.classes.sharded``), without a process group:
each "rank" is a thread with its own copy of the model, and the all-gather is a barrier over a
shared list. Oracle: ``analyze_classes`` of the same model on the whole probe in one call; the
split runs must give the same statistics, on every rank, for uneven slices and for a rank whose
slice is empty (it still runs every forward pass on padding, so nobody waits forever)."""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
from torch import nn

from svd_callback.classes.analysis import analyze_classes
from svd_callback.classes.config import ClassAnalysisConfig
from svd_callback.classes.probe import ProbeSet
from svd_callback.classes.report import ClassTracker
from svd_callback.classes.sharded import ProbeSplit


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 20), nn.ReLU(),
                         nn.Linear(20, 4))


def _probe(size: int) -> ProbeSet:
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(size) % 4
    return ProbeSet(torch.randn(size, 1, 8, 8, generator=gen), labels, torch.arange(size))


class _Barrier:
    """``gather(obj, world)`` for ``world`` threads: every thread's object, in rank order."""

    def __init__(self, world: int) -> None:
        self.slots: list = [None] * world
        self.barrier = threading.Barrier(world, timeout=60)
        self.calls = [0] * world

    def for_rank(self, rank: int):
        def gather(obj, world):
            self.calls[rank] += 1
            self.slots[rank] = obj
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()
            return out

        return gather


def _split_reports(model, probe, config, world, trackers=None, **options):
    shared = _Barrier(world)
    reports: list = [None] * world
    errors: list = []

    def run(rank: int) -> None:
        try:
            split = ProbeSplit(rank, world, shared.for_rank(rank))
            tracker = None if trackers is None else trackers[rank]
            reports[rank] = analyze_classes(copy.deepcopy(model), probe, config, split=split,
                                            tracker=tracker, **options)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a rank did not return"
    assert not errors, errors
    assert shared.calls == [1] * world  # one merge per analysis on every rank
    return reports


def _same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for layer, stats in expected.items():
        assert got[layer].keys() == stats.keys(), layer
        for key, value in stats.items():
            if math.isnan(value):
                assert math.isnan(got[layer][key]), (layer, key)
            else:
                assert got[layer][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (layer, key)


@pytest.mark.parametrize("size, world, edge_rule", [
    (45, 2, "influential"),  # slices of 23 and 22 images, three batches of 8 on each rank
    (10, 3, "mean_share"),  # slices of 4, 4 and 2
    (3, 4, "influential"),  # rank 3 has no probe image: it runs on padding and takes part
])
def test_split_probe_gives_the_statistics_of_the_whole_probe(size, world, edge_rule):
    model, probe = _model(), _probe(size)
    config = ClassAnalysisConfig(batch_size=8, edge_rule=edge_rule, top_k=6,
                                 factorization_layers=["2"])
    expected = analyze_classes(copy.deepcopy(model), probe, config, factorize=True)
    assert "probe" not in expected.reasons and expected.layers
    for report in _split_reports(model, probe, config, world, factorize=True):
        assert report.reasons == expected.reasons
        _same(report.record_metrics(), expected.record_metrics())
        assert report.edges == expected.edges
        assert torch.equal(report.class_counts, expected.class_counts)


def test_split_keeps_the_tracked_stability_across_analyses():
    probe, config = _probe(24), ClassAnalysisConfig(batch_size=8)
    before = _model()
    after = copy.deepcopy(before)
    with torch.no_grad():
        after[5].weight.mul_(1.5)
    whole = ClassTracker()
    analyze_classes(copy.deepcopy(before), probe, config, tracker=whole)
    expected = analyze_classes(copy.deepcopy(after), probe, config, tracker=whole)
    assert not math.isnan(expected.record_metrics()["7"]["edge_stability_mean"])
    trackers = [ClassTracker(), ClassTracker()]
    _split_reports(before, probe, config, 2, trackers=trackers)
    for report in _split_reports(after, probe, config, 2, trackers=trackers):
        _same(report.record_metrics(), expected.record_metrics())


def test_probe_split_bounds():
    assert [ProbeSplit(r, 3).bounds(10) for r in range(3)] == [(0, 4, 4), (4, 8, 4), (8, 10, 4)]
    assert ProbeSplit(3, 4).bounds(3) == (3, 3, 1)
    part, real = ProbeSplit(1, 2).slice(torch.arange(3.0)[:, None])
    assert real == 1 and part.flatten().tolist() == [2.0, 0.0]  # padded with the first image
    with pytest.raises(ValueError):
        ProbeSplit(2, 2)
