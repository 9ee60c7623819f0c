"""The alert zoo's scoring: the replayed baselines against Lightning's own EarlyStopping, the
outcome definitions on planted curves, Wilson intervals against published values, the zoo's
coverage of recipes and failures, and a smoke run of ``--quick`` (train, cache, replay)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import EarlyStopping

from experiments.alert_zoo import detectors
from experiments.alert_zoo.train import load_cached
from experiments.alert_zoo.zoo import BROKEN, HEALTHY, PAIRS, build_model
from svd_callback.examples.data import FASHION_MNIST_ROOT
from svd_callback.sinks.history_rows import read_analyses, recorded_rules, replay_alerts

REPO = Path(__file__).resolve().parents[1]


def rows_of(val_loss, val_acc=None, train_loss=None):
    n = len(val_loss)
    val_acc = val_acc or [0.5] * n
    train_loss = train_loss or [1.0] * n
    return [{"epoch": 0, "val_loss": 2.3, "val_acc": 0.1, "train_loss": math.nan}] + [
        {"epoch": k + 1, "val_loss": val_loss[k], "val_acc": val_acc[k],
         "train_loss": train_loss[k]} for k in range(n)]


def lightning_stop_epoch(losses, patience=3):
    """Drive Lightning's EarlyStopping decision function epoch by epoch (the oracle)."""
    callback = EarlyStopping(monitor="val_loss", patience=patience, mode="min")
    for epoch, value in enumerate(losses, start=1):
        stop, _ = callback._evaluate_stopping_criteria(torch.tensor(value))
        if stop:
            return epoch
    return None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 3.0, width=32),  # logged losses are float32
                          st.sampled_from([math.nan, math.inf, 1.0])),
                min_size=1, max_size=15))
def test_early_stopping_replay_equals_lightning(losses):
    assert detectors.early_stopping_epoch(rows_of(losses)) == lightning_stop_epoch(losses)


def test_decided_epoch_and_non_finite():
    # best accuracy stops improving by more than 0.5 points after epoch 3
    rows = rows_of([1.0] * 6, val_acc=[0.5, 0.7, 0.80, 0.803, 0.79, 0.804])
    assert detectors.decided_epoch(rows) == 3
    # still improving at the end: decided at the last epoch
    assert detectors.decided_epoch(rows_of([1.0] * 4, val_acc=[0.2, 0.4, 0.6, 0.8])) == 4
    # a non-finite loss decides the outcome there
    rows = rows_of([1.0, math.nan], val_acc=[0.5, 0.1])
    assert detectors.first_non_finite(rows) == 2 == detectors.decided_epoch(rows)
    assert detectors.best_accuracy(rows) == 0.5


def test_no_progress_detector():
    falling = rows_of([1.0] * 6, val_acc=[0.5] * 6, train_loss=[2.0, 1.5, 1.0, 0.7, 0.5, 0.3])
    assert detectors.no_progress_epoch(falling) is None
    # training loss 1.0 -> 0.995 over three epochs (epochs 1 -> 4): < 1% fall
    flat = rows_of([1.0] * 5, val_acc=[0.5] * 5, train_loss=[1.0, 0.999, 0.998, 0.995, 0.99])
    assert detectors.no_progress_epoch(flat) == 4
    # validation accuracy at chance + 5 points at epoch 3
    chance = rows_of([1.0] * 4, val_acc=[0.1, 0.12, 0.15, 0.3],
                     train_loss=[2.0, 1.0, 0.5, 0.2])
    assert detectors.no_progress_epoch(chance) == 3


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (81, 263, 0.2553,
                                                                             0.3662)])
def test_wilson_interval(k, n, low, high):
    # published values (Newcombe 1998, Table I; the last row his example 81/263)
    got = detectors.wilson(k, n)
    assert got == pytest.approx((low, high), abs=6e-4)


def test_zoo_covers_recipes_and_failures():
    for pair in PAIRS.values():
        healthy = [k for k in pair.kinds if k.role == HEALTHY]
        failures = [k for k in pair.kinds if k.role == BROKEN]
        assert len(healthy) >= 4 and len(failures) >= 8
        assert {k.model["optimizer"] for k in healthy} >= {"sgd", "adam"} or \
            {k.model["optimizer"] for k in healthy} >= {"sgd", "adamw"}
        assert {bool(k.model.get("weight_decay")) for k in healthy} == {True, False}
        assert {k.model.get("schedule", "constant") for k in healthy} == {"constant", "cosine"}
        assert len(pair.seeds) >= 3


def test_build_model_applies_failures():
    pair = PAIRS["digits_cnn"]
    torch.manual_seed(0)
    plain = build_model(pair, pair.kind("adam"))
    torch.manual_seed(0)
    scaled = build_model(pair, pair.kind("bad_init"))
    assert torch.allclose(scaled.features[0].weight, 30 * plain.features[0].weight)
    frozen = build_model(pair, pair.kind("frozen"))
    assert not frozen.features[2].weight.requires_grad and not frozen.hidden.weight.requires_grad
    assert frozen.features[0].weight.requires_grad
    optimized = {id(p) for g in frozen.configure_optimizers().param_groups for p in g["params"]}
    assert id(frozen.hidden.weight) not in optimized


def _zoo(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "experiments.alert_zoo.run", *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_quick_zoo_trains_caches_and_replays(tmp_path):
    pairs = ["digits_cnn"]
    if Path(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz").exists():
        pairs.append("fashion_resnet")
    done = _zoo("--quick", "--out", str(tmp_path), "--threads", "1", "--pairs", *pairs)
    assert done.returncode == 0, done.stderr[-2000:]
    for pair in pairs:
        cached = sorted(p.name for p in (tmp_path / pair).glob("*.json.gz"))
        assert cached == sorted(f"{k}_seed0.json.gz" for k in
                                ("adam", "sgd", "lr_nan", "lr_dead", "frozen"))
        assert f"## {pair}:" in done.stdout
    assert "| lr_nan | 0 | broken |" in done.stdout
    assert "NonFiniteWeights" in done.stdout  # the NaN run is flagged by the monitor
    # the replay of each cached history raises exactly the alerts the callback raised online
    for path in sorted(tmp_path.rglob("*.json.gz")):
        record = load_cached(path)
        replayed = replay_alerts(read_analyses(record["history"]),
                                 recorded_rules(record["history"]))
        key = ("rule", "layer", "mode", "epoch", "severity")
        assert [tuple(a.to_dict()[k] for k in key) for a in replayed] == \
            [tuple(a[k] for k in key) for a in record["online_alerts"]], path.name
    replay = _zoo("--quick", "--out", str(tmp_path), "--score-only", "--pairs", *pairs)
    assert replay.returncode == 0, replay.stderr[-2000:]
    strip = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert strip == [line for line in replay.stdout.splitlines() if line.startswith("|")]


def test_zoo_stops_with_data_instruction(tmp_path):
    done = _zoo("--quick", "--out", str(tmp_path), "--pairs", "fashion_resnet", "--root",
                str(tmp_path / "nowhere"), timeout=60)
    assert done.returncode == 2
    assert "apt-get install" in done.stderr and "Traceback" not in done.stderr


def test_trap_rule_replayed_only_where_the_history_holds_trap_metrics():
    def names(rows):
        return {type(rule).__name__ for rule in recorded_rules(rows)}

    def layer(metrics):
        return {"type": "layer", "epoch": 0, "step": 0, "layer": "a", "metrics": metrics}

    def run(groups):
        return {"type": "run", "step": 0, "epoch": 0, "metric_groups": groups}

    assert "TrapsAppeared" in names([layer({"alpha": 2.5, "num_traps": 0.0})])
    assert "TrapsAppeared" not in names([layer({"alpha": 2.5})])
    # the run row's groups decide where there is one (as the callback decided)
    assert "TrapsAppeared" in names([run(["norms", "traps"]), layer({"alpha": 2.5})])
    assert "TrapsAppeared" not in names([run(["norms"]), layer({"num_traps": 0.0})])
    assert "ClassFeaturesEmpty" in names([run(["norms"]), {"type": "class", "layer": "a"}])
