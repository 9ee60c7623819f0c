"""The callback's checkpointed state: one entry per part (version 2), and the flat layout that
earlier versions wrote (version 1) still loads.

``data/monitor_state_v1.pt`` is ``SpectralMonitor.state_dict()`` as the version-1 code wrote it
after a 2-epoch digits fit (3 training batches per epoch, seed 0) of :func:`_monitor`'s
settings, with the ``EveryAnalysis`` rule raising one alert per analysis: 3 analyses, 3 alerts,
operator input sizes, heat maps, class probe and tracker, motion sketches, history path and run
id.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from svd_callback.alerts import AlertEngine, CallableRule, monitor_default_rules
from svd_callback.callback import SpectralMonitor
from svd_callback.examples import SmallCNN
from svd_callback.monitor.checkpoint import STATE_VERSION, upgrade

FIXTURE = Path(__file__).parent / "data" / "monitor_state_v1.pt"


def every_analysis(history, epoch, step):
    return f"analysis at step {step}"


def _monitor() -> SpectralMonitor:
    groups = ("norms", "powerlaw", "traps", "motion")
    return SpectralMonitor(
        conv_mode=("unfold", "operator"), metrics=groups,
        class_analysis={"probe_size": 40, "top_k": 8}, figures_every_n=1,
        history_file="h.jsonl", motion_sketch=4,
        alert_rules=[*monitor_default_rules(groups, class_analysis=True),
                     CallableRule(every_analysis, name="EveryAnalysis")])


def _equal(a, b) -> bool:
    """Equal through nested dicts and lists, tensors compared by value, NaN equal to NaN."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.fixture(scope="module")
def old():
    state = torch.load(FIXTURE, weights_only=True)  # as Lightning loads a checkpoint
    assert state["version"] == 1 and "analyses" in state
    return state


def test_a_version_1_state_loads_into_every_part(old):
    monitor = _monitor()
    monitor.load_state_dict(old)
    new = monitor.state_dict()
    assert new["version"] == STATE_VERSION == 2
    assert new["schedule"] == {"analyses": 3, "last_step": old["last_step"]}
    runner = new["runner"]
    assert runner["input_sizes"] == old["input_sizes"] and monitor.input_sizes == {
        "features.0": (8, 8), "features.2": (8, 8), "features.5": (4, 4)}
    engine = AlertEngine(monitor.alert_engine.rules)  # the engine reads its own old layout
    engine.load_state_dict(old["alert_engine"])
    assert _equal(runner["alert_engine"], engine.state_dict())
    assert [a["message"] for a in runner["alert_engine"]["alerts"]] == [
        a["message"] for a in old["alert_engine"]["alerts"]]
    assert runner["alert_totals"] == {"EveryAnalysis": 3}  # counted from the engine's alerts
    assert _equal(runner["training"], old["training"])
    assert _equal(runner["classes"], old["classes"]) and _equal(runner["motion"], old["motion"])
    publisher = new["publisher"]
    assert _equal(publisher["heatmaps"], {"spectra": old["spectra"],
                                          "figure_names": old["figure_names"]})
    assert publisher["history"] == {"history_path": old["history_path"],
                                    "run_id": old["run_id"]}
    assert _equal(new["summaries"], old["summaries"]) and len(monitor.summaries) == 3


def test_the_new_layout_round_trips(old):
    first = _monitor()
    first.load_state_dict(old)
    second = _monitor()
    second.load_state_dict(first.state_dict())
    assert _equal(second.state_dict(), first.state_dict())


def test_an_analysis_after_an_old_state_counts_on(old):
    monitor = _monitor()
    monitor.load_state_dict(old)
    torch.manual_seed(0)
    result = monitor.runner.run(SmallCNN(), step=old["last_step"] + 6, epochs_trained=3.0,
                                trigger="train_epoch_end")
    assert result.alert_totals["EveryAnalysis"] == 4  # 3 before the checkpoint, 1 now
    assert list(result.alert_totals)[:2] == ["NonFiniteWeights", "AlphaBelow"]  # every rule


def test_an_unknown_version_is_ignored_with_a_warning():
    monitor = _monitor()
    assert upgrade({"version": 99}) is None and upgrade([]) is None
    with pytest.warns(UserWarning, match="unknown version 99"):
        monitor.load_state_dict({"version": 99, "analyses": 5})
    assert monitor.state_dict()["schedule"]["analyses"] == 0
