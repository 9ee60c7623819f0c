"""The alert zoo: the replayed baselines against Lightning's own EarlyStopping and planted
curves, the published detectors' checks on planted probe rows, the probe recorder against
brute force (and against training without it), the mid-run switches, the zoo's coverage, the
scoring's intervals, and a smoke run of ``--quick`` (train, cache, replay)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.nn import functional as F

from experiments.alert_zoo import detectors
from experiments.alert_zoo import score as sc
from experiments.alert_zoo.data import ZooDigits
from experiments.alert_zoo.recording import (
    ProbeRecorder,
    _ActivationProbe,
    activation_stats,
    parameter_owners,
)
from experiments.alert_zoo.switches import MidRunSwitch, Switch, scale_learning_rates
from experiments.alert_zoo.train import load_cached
from experiments.alert_zoo.zoo import BROKEN, HEALTHY, PAIRS, TUNING, build_model
from experiments.common import trainer_for
from svd_callback.examples.data import FASHION_MNIST_ROOT
from svd_callback.sinks.history_rows import read_analyses, recorded_rules, replay_alerts

REPO = Path(__file__).resolve().parents[1]


def rows_of(val_loss, val_acc=None, train_loss=None, train_acc=None):
    n = len(val_loss)
    val_acc = val_acc or [0.5] * n
    train_loss = train_loss or [1.0] * n
    train_acc = train_acc or val_acc
    return [{"epoch": 0, "val_loss": 2.3, "val_acc": 0.1, "train_loss": math.nan}] + [
        {"epoch": k + 1, "val_loss": val_loss[k], "val_acc": val_acc[k],
         "train_loss": train_loss[k], "train_acc": train_acc[k]} for k in range(n)]


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
    # a mid-run failure's window starts after its onset: the healthy start does not count
    rows = rows_of([1.0] * 6, val_acc=[0.5, 0.8, 0.9, 0.3, 0.2, 0.25])
    assert detectors.best_accuracy(rows, start=4) == 0.3
    assert detectors.decided_epoch(rows, start=4) == 4


def test_no_progress_and_chance_detectors():
    falling = rows_of([1.0] * 6, val_acc=[0.5] * 6, train_loss=[2.0, 1.5, 1.0, 0.7, 0.5, 0.3])
    assert detectors.no_progress_epoch(falling) is None
    # training loss 1.0 -> 0.995 over three epochs (epochs 1 -> 4): < 1% fall
    flat = rows_of([1.0] * 5, val_acc=[0.5] * 5, train_loss=[1.0, 0.999, 0.998, 0.995, 0.99])
    assert detectors.no_progress_epoch(flat) == 4
    # validation accuracy at chance + 5 points at epoch 3
    chance = rows_of([1.0] * 4, val_acc=[0.1, 0.12, 0.15, 0.3],
                     train_loss=[2.0, 1.0, 0.5, 0.2])
    assert detectors.no_progress_epoch(chance) == 3
    assert detectors.chance_accuracy(chance).epochs == (1, 2, 3)  # from epoch 1, not 3
    assert detectors.chance_accuracy(chance, chance=None).epochs == ()


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (81, 263, 0.2553,
                                                                             0.3662)])
def test_wilson_interval(k, n, low, high):
    # published values (Newcombe 1998, Table I; the last row his example 81/263)
    got = detectors.wilson(k, n)
    assert got == pytest.approx((low, high), abs=6e-4)


# ---------------------------------------------------------------------- published detectors
def probe_row(kernels, biases=(), activations=(), layers=None, frozen=None):
    """A planted probe row: kernels as (grad_norm, grad_abs_mean, grad_mean, grad_zero,
    w_mean, size)."""
    params = {}
    for i, (norm, abs_mean, mean, zero, w_mean, size) in enumerate(kernels):
        params[f"l{i}.weight"] = {"module": "linear", "ndim": 2, "size": size,
                                  "grad_norm": norm, "grad_abs_mean": abs_mean,
                                  "grad_mean": mean, "grad_zero": zero, "grad_finite": True,
                                  "w_mean": w_mean, "w_abs_max": 1.0, "w_norm": 1.0}
    for i, (zero, size) in enumerate(biases):
        params[f"l{i}.bias"] = {"module": "linear", "ndim": 1, "size": size, "grad_zero": zero,
                                "grad_finite": True}
    return {"epoch": 0, "loss": 1.0, "params": params, "frozen": frozen or {},
            "layers": layers or {"l0": {"out_mean": 0.3, "out_abs_mean": 0.5, "finite": True},
                                 "l1": {"out_mean": 0.1, "out_abs_mean": 0.2, "finite": True}},
            "activations": list(activations)}


def test_autotrainer_gradient_statistics():
    row = probe_row([(1e-5, 1e-7, 1e-8, 0.0, 0.1, 100), (0.1, 1e-3, 1e-4, 0.0, 0.2, 50)],
                    biases=[(1.0, 10), (0.5, 40)])
    ratio, first = detectors.gradient_ratio(row)
    assert ratio == pytest.approx(1e-4) and first == 1e-5
    # zero entries: 0 of 100 + 0 of 50 + 10 of 10 + 20 of 40 = 30 of 200
    assert detectors.zero_gradient_ratio(row) == pytest.approx(30 / 200)


def test_autotrainer_decisions():
    """A flat run at chance with vanishing gradients is reported as ``vanish`` at the first
    check from 30% of the planned epochs on (the gating: a converging run with the same
    gradients is not reported); a run whose loss goes NaN is reported at the next check."""
    vanishing = probe_row([(1e-6, 1e-9, 1e-9, 0.0, 0.1, 100), (0.1, 1e-3, 1e-4, 0.0, 0.2, 50)])
    n = 10
    flat = rows_of([2.3] * n, val_acc=[0.1] * n, train_loss=[2.3] * n, train_acc=[0.1] * n)
    probe = [vanishing] * (n + 1)
    got = detectors.autotrainer(flat, probe, total=n)
    # judgment from len(history) >= 0.3 * 10 - 1 = 2: features set at epoch 2, outputs (and
    # so the verdict) examined at the next check
    assert got.epochs == (3,) and "vanish" in got.said[3]
    rising = [0.75 + 0.02 * k for k in range(n)]
    converging = rows_of([1.0] * n, val_acc=rising, train_loss=[1.0] * n, train_acc=rising)
    assert detectors.autotrainer(converging, probe, total=n).epochs == ()
    # "not converged" (best accuracy < 0.7 at a judgment) persists, as in AUTOTRAINER's
    # feature dictionary: a slow start is reported at the mid-training check (epoch 6)
    slow = [0.5 + 0.04 * k for k in range(n)]
    late = rows_of([1.0] * n, val_acc=slow, train_loss=[1.0] * n, train_acc=slow)
    assert detectors.autotrainer(late, probe, total=n).epochs == (6,)
    nan = rows_of([1.0, math.nan], val_acc=[0.5, 0.1], train_loss=[1.0, math.nan])
    got = detectors.autotrainer(nan, [vanishing] * 3, total=10, checkgap=3)
    # checks at epochs 1, 4, 7; NaN outputs read as a wrong output activation, as published
    assert got.epochs == (4,) and "activation_issue" in got.said[4]


def test_deepdiagnosis_checks():
    healthy = [probe_row([(0.1, 1e-3, 1e-4 * (k + 1), 0.0, 0.1 + 0.01 * k, 100)],
                         layers={"l0": {"out_mean": 0.3 + 0.01 * k, "out_abs_mean": 0.5,
                                        "finite": True},
                                 "l1": {"out_mean": 0.1, "out_abs_mean": 0.2, "finite": True}})
               for k in range(12)]  # the last layer's output is not watched
    rows = rows_of([1.0 - 0.05 * k for k in range(11)], val_acc=[0.5] * 11,
                   train_loss=[1.0 - 0.05 * k for k in range(11)],
                   train_acc=[0.5 + 0.01 * k for k in range(11)])
    assert detectors.deepdiagnosis(rows, healthy, total=11).epochs == ()
    # a frozen dense layer: its mean weight unchanged over the block of epochs 1-5
    frozen = [{**r, "frozen": {"f.weight": {"module": "linear", "ndim": 2, "w_mean": 0.25}}}
              for r in healthy]
    got = detectors.deepdiagnosis(rows, frozen, total=11)
    assert got.epochs == (5,) and "unchanged weights" in got.said[5]
    # vanishing gradient: mean |g| < 1e-7, at once
    vanishing = [probe_row([(1e-6, 1e-8, 1e-9, 0.0, 0.1 + 0.01 * k, 100)]) for k in range(12)]
    got = detectors.deepdiagnosis(rows, vanishing, total=11)
    assert got.epochs == (1,) and "vanishing" in got.said[1]
    # a dead ReLU layer: its output mean is exactly 0 (numerical error), at once
    dead = [{**r, "activations": [{"kind": "relu", "le0": 1.0, "dead_units": 1.0,
                                   "saturated": 0.0, "out_mean": 0.0, "finite": True}]}
            for r in healthy]
    assert detectors.deepdiagnosis(rows, dead, total=11).epochs == (1,)


def test_symptom_checks_thresholds():
    rows = rows_of([1.0] * 6, train_loss=[1.0] * 6)
    sat = {"kind": "sigmoid", "le0": 0.5, "dead_units": 0.0, "saturated": 0.6,
           "out_mean": 0.5, "finite": True}
    relu = {"kind": "relu", "le0": 0.75, "dead_units": 0.1, "saturated": 0.0,
            "out_mean": 0.2, "finite": True}
    probe = [probe_row([(0.1, 1e-3, 1e-4, 0.0, 0.1 * k, 100), (1e-3, 1e-5, 1e-6, 0.0, 0.2, 9)],
                       activations=[sat, relu]) for k in range(7)]
    got = detectors.symptom_checks(rows, probe)
    assert got["saturated activations"].epochs == (1, 2, 3, 4, 5, 6)
    assert got["dead ReLUs"].epochs == (1, 2, 3, 4, 5, 6)
    assert got["exploding gradient"].epochs == (1, 2, 3, 4, 5, 6)  # ratio 100 > 70
    assert got["vanishing gradient"].epochs == ()
    # the second matrix's mean stays 0.2 from epoch 1 on: unchanged over 5 analyses at 5
    assert got["unchanged weights"].epochs == (5, 6)
    assert got["unchanged loss"].epochs == (5, 6)


# ---------------------------------------------------------------------- recording
def test_activation_stats_brute_force():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 4
    x[:, 1] = -x[:, 1].abs()  # channel 1 dead on every probe value
    got = activation_stats("relu", x)
    assert got["le0"] == pytest.approx(float((x <= 0).float().mean()), abs=1e-4)
    assert got["dead_units"] == pytest.approx(1 / 3, abs=1e-4)
    assert got["saturated"] == pytest.approx(float((x.abs() >= 5).float().mean()), abs=1e-4)
    assert got["out_mean"] == pytest.approx(float(F.relu(x).double().mean()))


def test_activation_probe_sees_functional_and_module_calls():
    seen = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x):
            return torch.tanh(torch.sigmoid(F.relu(self.act(self.fc(x)))))

    with _ActivationProbe(lambda kind, t: seen.append(kind)):
        Net()(torch.randn(2, 4))
    assert seen == ["relu", "relu", "sigmoid", "tanh"]
    owners = parameter_owners(Net())
    assert owners == {"fc.weight": "linear", "fc.bias": "linear"}


def _fit_digits(callbacks, epochs=2, seed=0):
    pl.seed_everything(seed, verbose=False)
    pair = PAIRS["digits_cnn"]
    model = build_model(pair, pair.kind("adam"))
    data = ZooDigits(batch_size=64, seed=seed)
    trainer_for(epochs, callbacks).fit(model, datamodule=data)
    return model, data


def test_probe_recorder_leaves_training_unchanged():
    plain, _ = _fit_digits([])
    recorder = ProbeRecorder()
    probed, _ = _fit_digits([recorder])
    for (name, a), (_, b) in zip(plain.state_dict().items(), probed.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert [row["epoch"] for row in recorder.rows] == [0, 1, 2]
    row = recorder.rows[-1]
    assert len(row["activations"]) == 4  # three ReLU modules and the functional F.relu
    assert set(row["steps"]) == {n for n, p in probed.named_parameters() if p.ndim >= 2}


# ---------------------------------------------------------------------- mid-run switches
def test_scale_learning_rates_scales_groups_and_schedules():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)

    class Config:
        pass

    config = Config()
    config.scheduler = scheduler

    class Trainer:
        optimizers = [optimizer]
        lr_scheduler_configs = [config]

    assert scale_learning_rates(Trainer(), 100.0) == [pytest.approx(0.05)]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5.0)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5.0)  # base 10 x lambda 0.5


def test_midrun_switches_act_from_the_onset_epoch():
    class Snapshot(pl.Callback):
        def __init__(self):
            self.states, self.labels = [], []

        def on_train_epoch_end(self, trainer, pl_module):
            self.states.append({k: v.clone() for k, v in pl_module.state_dict().items()})
            self.labels.append(trainer.datamodule.train_set.tensors[1].clone())

    snap = Snapshot()
    freeze = MidRunSwitch(Switch("freeze"), onset=1, seed=0)
    labels = MidRunSwitch(Switch("labels"), onset=2, seed=0)
    model, data = _fit_digits([freeze, labels, snap], epochs=3)
    before, after = snap.states[0], snap.states[1]
    assert freeze.applied["epoch"] == 1 and "classifier.weight" not in freeze.applied["frozen"]
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (not name.startswith("classifier.")), name
    assert torch.equal(snap.labels[0], snap.labels[1])
    assert not torch.equal(snap.labels[1], snap.labels[2])  # randomised at the third epoch
    with pytest.raises(ValueError, match="onset"):
        MidRunSwitch(Switch("lr", 0.0), onset=0, seed=0)


# ---------------------------------------------------------------------- the zoo
def analysed_sizes(model):
    """min(rows, cols) of every conv/linear weight matrix (conv: out x in kh kw)."""
    return [min(m.weight.shape[0], m.weight[0].numel()) for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_zoo_covers_recipes_failures_and_heavy_tails():
    large = [name for name, pair in PAIRS.items()
             if pair.model_class not in ("SmallCNN", "ResNet")
             and max(analysed_sizes(build_model(pair, pair.kinds[0]))) >= 100]
    assert len(large) >= 3, large
    for pair in PAIRS.values():
        healthy = [k for k in pair.kinds if k.role == HEALTHY]
        failures = [k for k in pair.kinds if k.role == BROKEN]
        assert set(pair.tuning_seeds).isdisjoint(pair.heldout_seeds)
        if pair.split != TUNING:
            assert pair.source and not pair.tuning_seeds
        if not failures:  # a healthy-only false-alarm check
            continue
        assert len(healthy) >= 4 and len(failures) >= 8
        for kind in failures:
            assert kind.midrun == (kind.onset >= 1)
        assert {"lr_nan", "lr_dead", "lr_tiny", "frozen", "bad_init"} <= {k.name for k in failures}
    tuning = [p for p in PAIRS.values() if p.split == TUNING]
    names = {k.name for p in tuning for k in p.kinds}
    assert {"mid_lr_x100", "mid_lr_zero", "mid_labels", "mid_inputs_zero", "mid_freeze",
            "vanishing", "dying_relu", "raw_pixels", "labels_40", "wd_strong", "adam_l2",
            "dropout_95", "long_cosine", "finetune", "sgd_plain", "label_smoothing", "dropout",
            "augment"} <= names
    assert any((k.epochs or p.epochs) >= 40 for p in tuning for k in p.kinds
               if k.role == HEALTHY)


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
    dying = build_model(pair, pair.kind("dying_relu"))
    assert bool((dying.hidden.bias == -1).all()) and not bool((dying.classifier.bias == -1).all())
    lstm = PAIRS["row_lstm"]
    torch.manual_seed(0)
    plain = build_model(lstm, lstm.kind("published"))
    torch.manual_seed(0)
    scaled = build_model(lstm, lstm.kind("bad_init"))
    assert torch.allclose(scaled.lstm.weight_hh_l1, 30 * plain.lstm.weight_hh_l1)


# ---------------------------------------------------------------------- scoring
def test_bootstrap_and_precision():
    assert sc.bootstrap([[[1, 1], [1]]], lambda r: r[0]) == (1.0, 1.0)
    assert sc.bootstrap([[[0, 0], [0]]], lambda r: r[0]) == (0.0, 0.0)
    low, high = sc.bootstrap([[[1, 0, 1, 0], [1, 1], [0]]], lambda r: r[0], reps=500)
    assert 0.0 <= low < 4 / 7 < high <= 1.0
    # one cell: the two-stage bootstrap is the ordinary one; its percentile interval of a
    # proportion 0.3 of 100 runs is about +-0.09
    cell = [1] * 30 + [0] * 70
    low, high = sc.bootstrap([[cell]], lambda r: r[0], reps=2000)
    assert low == pytest.approx(0.21, abs=0.02) and high == pytest.approx(0.39, abs=0.02)
    assert sc.precision_at(1.0, 0.0) == 1.0
    assert sc.precision_at(0.5, 0.1) == pytest.approx(0.05 / (0.05 + 0.09))
    assert math.isnan(sc.precision_at(0.0, 0.0))


def test_masked_history_keeps_only_the_norms():
    rows = [{"type": "layer", "epoch": 0, "step": 0, "layer": "a", "kind": "linear",
             "mode": "unfold", "metrics": {"spectral_norm": 2.0, "alpha": 3.0}},
            {"type": "class", "epoch": 0, "step": 0, "layer": "a", "reason": None,
             "metrics": {"jaccard_mean": 0.5}},
            {"type": "summary", "epoch": 0, "step": 0, "mode": "unfold",
             "metrics": {"alpha_mean": 3.0, "spectral_norm_mean": 2.0, "n_layers": 1}},
            {"type": "training", "epoch": 0, "step": 0, "metrics": {"val_loss": 1.0}}]
    analysis = read_analyses(rows)[0]
    assert analysis.class_metrics and analysis.report[0].metrics["alpha"] == 3.0
    got = sc.masked([analysis], sc.NORM_METRICS)[0]
    assert [record.metrics for record in got.report] == [{"spectral_norm": 2.0}]
    assert got.summary == {"unfold": {"spectral_norm_mean": 2.0}}
    assert got.training == {"val_loss": 1.0} and got.class_metrics == {}
    assert analysis.report[0].metrics["alpha"] == 3.0  # the input is left as it was


def test_class_rows_replayed_as_the_engine_read_them():
    def rows(epoch, specific, retained, fractions):
        common = {"epoch": epoch, "step": 10 * epoch}
        return [{"type": "layer", **common, "layer": "fc", "kind": "linear", "mode": "unfold",
                 "metrics": {"spectral_norm": 1.0}},
                {"type": "class", **common, "layer": "fc", "reason": None,
                 "metrics": {"jaccard_mean": 0.5, "feature_fraction_mean": 0.05,
                             "feature_count_mean": 3.2},
                 "specific_neurons": specific, "specific_retained": retained},
                {"type": "class_summary", **common, "feature_layer": "fc",
                 "feature_fraction": fractions}]
    history = rows(1, [2, 3], None, [0.1, 0.0]) + rows(2, [0, 3], [0, 3], [0.1, 0.0])
    analyses = read_analyses(history)
    assert analyses[0].class_metrics["fc"]["feature_count/0"] == pytest.approx(6.4)  # 0.1 x 64
    assert analyses[1].class_metrics["fc"]["specific_retained/0"] == 0.0
    alerts = replay_alerts(analyses, recorded_rules(history))
    assert [(a.rule, a.layer, a.metric, a.epoch) for a in alerts] == [
        ("ClassLostSpecificNeurons", "fc", "specific_neurons/0", 2)]


def _zoo(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "experiments.alert_zoo.run", *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_quick_zoo_trains_caches_and_replays(tmp_path):
    pairs = ["digits_cnn"]
    if Path(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz").exists():
        pairs.append("fashion_mlp")
    done = _zoo("--quick", "--out", str(tmp_path), "--pairs", *pairs)
    assert done.returncode == 0, done.stderr[-2000:]
    from experiments.alert_zoo.run import QUICK
    for pair in pairs:
        cached = sorted(p.name for p in (tmp_path / pair).glob("*.json.gz"))
        assert cached == sorted(f"{k}_seed0.json.gz" for k in QUICK[pair]["kinds"])
        assert f"## {pair}:" in done.stdout
    assert "| lr_nan | 0 | broken |" in done.stdout
    assert "NonFiniteWeights" in done.stdout  # the NaN run is flagged by the monitor
    # the mid-run switch acted at its onset and the record says so
    record = load_cached(tmp_path / "digits_cnn" / "mid_lr_zero_seed0.json.gz")
    assert record["onset"] == 4 and record["applied"]["epoch"] == 4
    assert [row["lr"] for row in record["epochs"][1:]] == [3e-3] * 4 + [0.0]
    assert len(record["probe"]) == len(record["epochs"]) == 6
    # the fine-tuning run starts from its source's end state
    source = load_cached(tmp_path / "digits_cnn" / "adam_seed0.json.gz")
    tuned = load_cached(tmp_path / "digits_cnn" / "finetune_seed0.json.gz")
    assert tuned["epochs"][0]["val_acc"] == pytest.approx(source["epochs"][-1]["val_acc"])
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
    done = _zoo("--quick", "--out", str(tmp_path), "--pairs", "fashion_mlp", "--root",
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


def test_frozen_rules_log_the_rules_as_they_did_at_the_freeze():
    rows = [{"type": "run", "step": 0, "epoch": 0, "metric_groups": ["norms", "heavy_tail"]},
            {"type": "class", "epoch": 0, "step": 0, "layer": "a"}]
    current = {r.name: r.action for r in recorded_rules(rows)}
    frozen = {r.name: r.action for r in sc.frozen_rules(rows)}
    assert all(frozen[name] == "log" for name in sc.WARNING_AT_FREEZE)
    assert frozen["AlphaAbove"] == "info" and frozen["NonFiniteWeights"] == "stop"
    assert frozen["SpectralNormBlowUp"] == "log"
    assert {k: v for k, v in frozen.items() if k not in sc.WARNING_AT_FREEZE} == \
        {k: v for k, v in current.items() if k not in sc.WARNING_AT_FREEZE}
