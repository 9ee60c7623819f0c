"""SpectralMonitor in real Lightning runs on the digits CNN (CPU): what it logs, where, when, and
that it never changes the training."""

from __future__ import annotations

import logging
import math
import random
import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import digits_fit
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util

from svd_callback.alerts import Alert, RankCollapse
from svd_callback.analysis import analyze
from svd_callback.callback import SpectralMonitor
from svd_callback.examples import SmallCNN
from svd_callback.layers import find_layers
from svd_callback.sinks.history import read_history

BATCHES = 6  # training batches per epoch


def fit(root: Path, callbacks=(), logger=False, max_epochs: int = 2, model=None, seed: int = 0,
        ckpt_path=None, **trainer_kwargs):
    """Seeded digits run on the CPU; returns (trainer, model). ``model``: a module or a factory
    (called after seeding)."""
    options = dict(limit_train_batches=BATCHES, limit_val_batches=2, num_sanity_val_steps=1,
                   log_every_n_steps=2)
    options.update(trainer_kwargs)
    return digits_fit(root, callbacks, model, max_epochs=max_epochs, seed=seed, logger=logger,
                      ckpt_path=ckpt_path, batch_size=64, **options)


def accumulator(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def layer_rows(path) -> list[dict]:
    return [r for r in read_history(path) if r["type"] == "layer"]


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_epochs": -1}, "every_n_epochs.*-1"),
        ({"every_n_steps": 2.5}, "every_n_steps.*2.5"),
        ({"check_on": "epoch_end"}, "check_on must be one of.*'epoch_end'"),
        ({"on": "epoch_end"}, "check_on must be one of.*'epoch_end'"),
        ({"conv_mode": ("unfold", "fft")}, "conv_mode.*'fft'"),
        ({"conv_mode": ()}, "conv_mode must name at least one"),
        ({"metrics": ("all", "typo")}, "metrics must be among.*'typo'"),
        ({"metrics": ("norms", "spikes")}, "metrics.*'spikes'"),
        ({"normalization": "l2"}, "normalization.*'l2'"),
        ({"ww_compat": True, "normalization": "raw"}, "ww_compat.*'raw'"),
        ({"fit": "mle"}, "fit must be one of.*'mle'"),
        ({"input_size": (8, 0)}, r"input_size.*\(8, 0\)"),
        ({"figures_every_n": -2}, "figures_every_n.*-2"),
        ({"figure_layers": True}, "figure_layers.*True"),
        ({"on_alert": "print"}, "on_alert must be callable.*'print'"),
        ({"history_file": ""}, "history_file.*''"),
        ({"include": ["features.*", ""]}, "include.*''"),
    ],
)
def test_invalid_configuration_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpectralMonitor(**kwargs)


def test_unknown_argument_lists_the_valid_names():
    with pytest.raises(TypeError, match="unexpected argument.*conv_modez.*valid:.*conv_mode"):
        SpectralMonitor(conv_modez="unfold")


def test_legacy_names_warn_and_map_to_the_current_ones():
    with pytest.warns(DeprecationWarning, match=r"conv_modes=\.\.\.\) is deprecated"):
        monitor = SpectralMonitor(conv_modes=("slices", "unfold"))
    with pytest.warns(DeprecationWarning, match="use check_on"):
        legacy = SpectralMonitor(on="validation_epoch_end")
    assert monitor.config.analysis.conv_mode == ("slices", "unfold")
    assert legacy.config.check_on == "validation_epoch_end"
    with pytest.raises(TypeError, match="both 'conv_mode' and its deprecated name"):
        SpectralMonitor(conv_mode="slices", conv_modes="unfold")



def test_state_dict_survives_a_weights_only_checkpoint_load(tmp_path):
    monitor = SpectralMonitor(conv_mode=("unfold", "operator"), figures_every_n=1)
    fit(tmp_path, [monitor], max_epochs=1)
    path = tmp_path / "state.pt"
    torch.save(monitor.state_dict(), path)
    restored = SpectralMonitor(conv_mode=("unfold", "operator"), figures_every_n=1)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.state_dict()["schedule"]["analyses"] == 2
    assert restored.summaries == monitor.summaries
    assert restored.input_sizes == monitor.input_sizes == {
        "features.0": (8, 8), "features.2": (8, 8), "features.5": (4, 4)}
    assert torch.equal(restored.heatmaps.spectra["unfold/hidden"]["quantiles"],
                       monitor.heatmaps.spectra["unfold/hidden"]["quantiles"])
    assert len(restored.alert_engine.history) == 2


# ---------------------------------------------------------------------------- end to end
def test_end_to_end_tensorboard_matches_analyze_on_the_saved_weights(tmp_path):
    modes = ("unfold", "operator")
    monitor = SpectralMonitor(conv_mode=modes, figures_every_n=2, figure_layers=2)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer, model = fit(tmp_path, [monitor], logger, max_epochs=3)
    steps = [0, BATCHES, 2 * BATCHES, 3 * BATCHES]

    checkpoint = tmp_path / "final.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = SmallCNN.load_from_checkpoint(checkpoint)
    final = analyze(saved, conv_mode=modes, example_input=saved.example_input_array)

    acc = accumulator(logger.log_dir)
    scalars = set(acc.Tags()["scalars"])
    names = [spec.name for spec in find_layers(model)[0]]
    assert names == ["features.0", "features.2", "features.5", "hidden", "classifier"]
    checked = 0
    for record in final:
        assert record.reason is None
        suffix = "" if record.mode == "unfold" else f".{record.mode}"
        if record.kind == "linear" and record.mode != "unfold":  # logged once, under unfold
            assert not any(t.endswith(f"{suffix}/{record.name}") for t in scalars)
            assert f"spectra/{record.mode}/{record.name}" not in acc.Tags()["tensors"]
            continue
        for metric in monitor.config.analysis.metric_names:
            if metric in ("matrix_rank", "rank_loss"):  # constant: constant_metrics=True only
                assert f"spectral/{metric}{suffix}/{record.name}" not in scalars
                continue
            value = record.metrics.get(metric)
            tag = f"spectral/{metric}{suffix}/{record.name}"
            if value is None or not math.isfinite(value):
                continue
            events = acc.Scalars(tag)
            assert [e.step for e in events] == steps, tag
            assert all(math.isfinite(e.value) for e in events)
            assert events[-1].value == pytest.approx(value, rel=1e-5, abs=1e-6), tag
            checked += 1
        for norm in ("log_norm", "spectral_norm", "stable_rank"):
            assert f"spectral/{norm}{suffix}/{record.name}" in scalars
        spectra = acc.Tensors(f"spectra/{record.mode}/{record.name}")
        assert [e.step for e in spectra] == steps
        buckets = tensor_util.make_ndarray(spectra[-1].tensor_proto)
        assert buckets[:, 2].sum() == int((record.svals > 0).sum())
        assert buckets[0, 0] == pytest.approx(math.log10(record.svals[record.svals > 0].min()))
        assert buckets[-1, 1] == pytest.approx(math.log10(record.svals.max()))
    assert checked > 40

    assert [e.step for e in acc.Scalars("all_layers/alpha_mean")] == steps
    assert [e.step for e in acc.Scalars("all_layers/alpha_mean.operator")] == steps
    assert acc.Scalars("alerts/total")[0].step == 0
    description = acc.SummaryMetadata("spectral/alpha.operator/features.2").summary_description
    assert "conv mode operator" in description and "normalization raw" in description
    assert "KS" in description
    tensors = set(acc.Tags()["tensors"])
    assert {"spectral/conventions", "custom_scalars__config__"} <= tensors
    layout = layout_pb2.Layout()
    config = acc.Tensors("custom_scalars__config__")[-1].tensor_proto
    layout.ParseFromString(tensor_util.make_ndarray(config).item())
    assert [c.title for c in layout.category][:3] == [
        "alerts", "all layers [unfold]", "all layers [operator]"]
    for category in layout.category:  # every chart shows something
        for chart in category.chart:
            if chart.HasField("margin"):
                assert chart.margin.series[0].value in scalars, chart.title
                continue
            (pattern,) = chart.multiline.tag
            assert any(re.search(pattern, tag) for tag in scalars), chart.title
    images = set(acc.Tags()["images"])
    # figure layers are taken among the fitted ones (features.0's 16 x 9 matrix has no fit)
    assert math.isnan(final.get("features.0", "unfold").metrics["alpha"])
    assert {f"spectral_figures/esd/unfold/{n}" for n in ("features.5", "hidden")} <= images
    assert "spectral_figures/esd/unfold/features.0" not in images
    assert "spectral_figures/heatmap/operator" in images
    # figures at analyses 0 and 2, then at the end of training
    assert [e.step for e in acc.Images("spectral_figures/heatmap/unfold")] == [0, 12, 18]

    rows = read_history(Path(logger.log_dir) / "spectral_history.jsonl")
    layers = [r for r in rows if r["type"] == "layer"]
    assert len(layers) == len(steps) * len(names) * len(modes)
    assert sorted({r["epochs_trained"] for r in layers}) == [0.0, 1.0, 2.0, 3.0]
    assert all(r["normalization"] == "raw" and r["fit"] == "ks" and r["mode"] in modes
               for r in layers)
    assert [r["trigger"] for r in rows if r["type"] == "summary"][::2] == [
        "fit_start", "train_epoch_end", "train_epoch_end", "train_epoch_end"]
    assert not [r for r in rows if r["type"] == "alert" and r["severity"] == "stop"]
    assert trainer.current_epoch == 3 and not trainer.should_stop


class _Snapshot(Callback):
    """Records everything the monitor must not change, before or after it runs."""

    def __init__(self, role: str, partner: _Snapshot | None = None, monitor=None) -> None:
        self.role, self.partner, self.monitor = role, partner, monitor
        self.state: dict | None = None
        self.compared = 0

    def _capture(self, module: pl.LightningModule) -> dict:
        return {
            "params": {n: p.detach().clone() for n, p in module.named_parameters()},
            "grads": {n: None if p.grad is None else p.grad.clone()
                      for n, p in module.named_parameters()},
            "requires_grad": {n: p.requires_grad for n, p in module.named_parameters()},
            "buffers": {n: b.clone() for n, b in module.named_buffers()},
            "training": {n: m.training for n, m in module.named_modules()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": np.random.get_state()[1].copy(),
            "python_rng": random.getstate(),
            "grad_enabled": torch.is_grad_enabled(),
        }

    def _hook(self, trainer, module) -> None:
        if self.role == "before":
            self.state = self._capture(module)
            return
        analyses = self.monitor.schedule.analyses
        before, after = self.partner.state, self._capture(module)
        assert analyses > 0
        for key in ("params", "grads", "buffers"):
            for name, value in before[key].items():
                other = after[key][name]
                assert (value is None) == (other is None), (key, name)
                assert value is None or torch.equal(value, other), (key, name)
        assert torch.equal(before["torch_rng"], after["torch_rng"])
        assert len(before["cuda_rng"]) == len(after["cuda_rng"])
        assert all(torch.equal(a, b) for a, b in zip(before["cuda_rng"], after["cuda_rng"],
                                                     strict=True))
        assert np.array_equal(before["numpy_rng"], after["numpy_rng"])
        for key in ("requires_grad", "training", "python_rng", "grad_enabled"):
            assert before[key] == after[key], key
        self.compared += 1

    def on_train_start(self, trainer, pl_module):
        if self.role == "before":
            pl_module.features[0].eval()  # a module in eval mode must stay so
            pl_module.hidden.bias.requires_grad_(False)
        self._hook(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._hook(trainer, pl_module)


def test_the_analysis_changes_nothing_in_the_model_or_the_random_generators(tmp_path, device):
    monitor = SpectralMonitor(conv_mode=("unfold", "operator", "slices"), metrics="all")
    before = _Snapshot("before")
    after = _Snapshot("after", before, monitor)
    fit(tmp_path, [before, monitor, after], max_epochs=2,
        accelerator="gpu" if device == "cuda" else "cpu")
    assert after.compared == 3 and monitor.schedule.analyses == 3


def test_weights_are_bit_identical_with_and_without_the_monitor(tmp_path):
    def without_example():
        model = SmallCNN()
        model.example_input_array = None  # input sizes then come from the training data
        return model

    def run(name, callbacks):
        logger = TensorBoardLogger(tmp_path / name, name="", version=0)
        _, model = fit(tmp_path / name, callbacks, logger, max_epochs=2, seed=7,
                       model=without_example)
        return model.state_dict(), torch.get_rng_state()

    monitor = SpectralMonitor(conv_mode=("unfold", "operator"), metrics="all", every_n_steps=4,
                              figures_every_n=4)
    plain_weights, plain_rng = run("plain", [])
    watched_weights, watched_rng = run("watched", [monitor])
    assert monitor.schedule.analyses >= 5 and monitor.input_sizes["features.5"] == (4, 4)
    assert plain_weights.keys() == watched_weights.keys()
    for name, value in plain_weights.items():
        assert torch.equal(value, watched_weights[name]), name
    assert torch.equal(plain_rng, watched_rng)


# ---------------------------------------------------------------------------- other loggers
def test_early_stopping_and_checkpointing_on_a_spectral_aggregate(tmp_path):
    monitor = SpectralMonitor()
    stop = EarlyStopping(monitor="all_layers/alpha_mean", mode="min",
                         stopping_threshold=1e6, check_on_train_epoch_end=True)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="all_layers/log_norm_mean",
                           mode="max", save_top_k=1, save_on_train_epoch_end=True)
    trainer, _ = fit(tmp_path, [monitor, stop, best], max_epochs=5, enable_checkpointing=True)
    assert trainer.current_epoch == 1 and stop.stopped_epoch == 0
    entry = monitor.summaries[-1]
    assert entry["step"] == BATCHES
    expected = entry["summary"]["unfold"]["log_norm_mean"]
    assert float(best.best_model_score) == pytest.approx(expected)
    assert Path(best.best_model_path).exists()


def test_csv_logger_gets_the_scalars_and_the_history_goes_to_its_directory(tmp_path):
    logger = CSVLogger(tmp_path, name="csv", version=0)
    fit(tmp_path, [SpectralMonitor(figures_every_n=1)], logger, max_epochs=2)
    frame = pd.read_csv(Path(logger.log_dir) / "metrics.csv")
    rows = frame[frame["all_layers/alpha_mean"].notna()]
    assert rows["step"].tolist() == [0, BATCHES, 2 * BATCHES]
    assert rows["spectral/log_norm/features.0"].notna().all()
    assert rows["alerts/total"].notna().all()
    assert rows["epoch"].tolist() == [0, 0, 1]
    assert len(layer_rows(Path(logger.log_dir) / "spectral_history.jsonl")) == 3 * 5


def test_training_scalars_reach_the_rules_and_the_history(tmp_path):
    """The trainer's epoch-mean losses (not this callback's tags) are what the rules read
    (``Snapshot.training``), online and in the history file."""
    seen: list[dict] = []

    def spy(history, epoch, step):
        seen.append(dict(history.latest.training))
        return []

    def gap(history, epoch, step):  # fires at the first analysis with both losses
        scalars = history.latest.training
        if "val_loss" in scalars and "train_loss" in scalars and epoch == 1:
            return Alert(rule="gap", value=scalars["val_loss"] - scalars["train_loss"])
        return None

    trainer, _ = fit(tmp_path, [SpectralMonitor(alert_rules=[gap, spy])], max_epochs=2)
    rows = read_history(tmp_path / "spectral_history.jsonl")
    training = [r for r in rows if r["type"] == "training"]
    alerts = [r for r in rows if r["type"] == "alert" and r["rule"] == "gap"]
    # the analysis of the initial weights comes before any logged scalar: no row, nothing seen
    assert [r["epoch"] for r in training] == [1, 2] and seen[0] == {}
    for row, online in zip(training, seen[1:], strict=True):
        assert row["metrics"] == pytest.approx(online)
        assert not any(k.startswith(("spectral", "all_layers/", "classes/", "alerts/"))
                       for k in online)
    last = training[-1]["metrics"]
    assert last["train_loss"] == pytest.approx(float(trainer.callback_metrics["train_loss"]))
    assert last["val_loss"] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert [a["epoch"] for a in alerts] == [1]
    first = training[0]["metrics"]
    assert alerts[0]["value"] == pytest.approx(first["val_loss"] - first["train_loss"])


def test_without_a_logger_the_history_goes_to_the_root_dir_and_one_info_is_given(tmp_path):
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(handler)
    try:
        trainer, _ = fit(tmp_path, [SpectralMonitor()], logger=False, max_epochs=2)
    finally:
        lightning_logger.removeHandler(handler)
    assert sum("has no logger" in m for m in messages) == 1
    assert len(layer_rows(tmp_path / "spectral_history.jsonl")) == 3 * 5
    assert "all_layers/alpha_mean" in trainer.callback_metrics
    assert "alerts/count" in trainer.callback_metrics
    # per-layer values go to the loggers and the history file only, unless asked for
    assert not [k for k in trainer.callback_metrics if k.startswith("spectral/")]
    trainer, _ = fit(tmp_path / "opt_in", [SpectralMonitor(per_layer_callback_metrics=True)],
                     logger=False, max_epochs=1)
    assert "spectral/alpha/hidden" in trainer.callback_metrics


# ---------------------------------------------------------------------------- schedule
def test_validation_schedule_skips_the_sanity_check_and_odd_epochs(tmp_path):
    monitor = SpectralMonitor(check_on="validation_epoch_end", every_n_epochs=2)
    fit(tmp_path, [monitor], max_epochs=4, num_sanity_val_steps=2)
    assert [(e["step"], e["trigger"]) for e in monitor.summaries] == [
        (0, "fit_start"), (2 * BATCHES, "validation_epoch_end"),
        (4 * BATCHES, "validation_epoch_end")]
    assert [e["epochs_trained"] for e in monitor.summaries] == [0.0, 2.0, 4.0]


def test_step_schedule_never_analyses_one_step_twice(tmp_path):
    monitor = SpectralMonitor(every_n_steps=3, every_n_epochs=1, log_init=False)
    fit(tmp_path, [monitor], max_epochs=2)
    assert [e["step"] for e in monitor.summaries] == [3, 6, 9, 12]
    assert [e["trigger"] for e in monitor.summaries] == ["train_step"] * 4
    assert [e["epochs_trained"] for e in monitor.summaries] == [0.5, 1.0, 1.5, 2.0]


# ---------------------------------------------------------------------------- alerts
def test_exploding_learning_rate_raises_the_stop_alert_and_stops(tmp_path):
    seen = []
    monitor = SpectralMonitor(on_alert=lambda alert, trainer, module: seen.append(alert))
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer, model = fit(tmp_path, [monitor], logger, max_epochs=6,
                         model=lambda: SmallCNN(lr=1e8))
    assert not all(torch.isfinite(p).all() for p in model.parameters())
    stops = [a for a in seen if a.severity == "stop"]
    assert stops and {a.rule for a in stops} == {"NonFiniteWeights"}
    assert trainer.current_epoch < 6
    rows = read_history(Path(logger.log_dir) / "spectral_history.jsonl")
    assert any(r["type"] == "alert" and r["rule"] == "NonFiniteWeights" for r in rows)
    nonfinite = [r for r in rows if r["type"] == "layer" and "non-finite" in (r["reason"] or "")]
    assert nonfinite and {r["reason_code"] for r in nonfinite} == {"nonfinite_weight"}
    acc = accumulator(logger.log_dir)
    text = tensor_util.make_ndarray(acc.Tensors("alerts")[-1].tensor_proto).item().decode()
    assert "NonFiniteWeights" in text
    assert max(e.value for e in acc.Scalars("alerts/total")) >= 1


class _RankOne(Callback):
    """Sabotage: the hidden layer's weight becomes rank one at the end of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                w = pl_module.hidden.weight
                w.copy_(torch.outer(w[:, 0], w[0, :]))


def test_rank_collapse_alert_with_stop_action_stops_the_run(tmp_path):
    rule = RankCollapse(metric="matrix_rank", action="stop")
    monitor = SpectralMonitor(alert_rules=[rule])
    trainer, _ = fit(tmp_path, [_RankOne(epoch=1), monitor], max_epochs=5)
    assert trainer.current_epoch == 2
    alerts = monitor.alert_engine.alerts_so_far
    assert [(a.rule, a.layer, a.severity) for a in alerts] == [
        ("RankCollapse", "hidden", "stop")]


def test_healthy_run_raises_no_stop_alert(tmp_path):
    monitor = SpectralMonitor(conv_mode=("unfold", "slices"))
    trainer, _ = fit(tmp_path, [monitor], max_epochs=3)
    assert trainer.current_epoch == 3
    assert not [a for a in monitor.alert_engine.alerts_so_far if a.severity == "stop"]


# ---------------------------------------------------------------------------- robustness
def test_a_failing_analysis_or_sink_becomes_a_warning_and_training_goes_on(tmp_path, monkeypatch):
    import svd_callback.monitor.runner as module
    from svd_callback.sinks.tensorboard import TensorBoardSink

    calls = {"n": 0}
    real = module.analyze

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("cusolver exploded")
        return real(*args, **kwargs)

    def broken_histogram(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "analyze", flaky)
    monkeypatch.setattr(TensorBoardSink, "histogram", broken_histogram)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    monitor = SpectralMonitor()
    with pytest.warns(UserWarning) as caught:
        trainer, _ = fit(tmp_path, [monitor], logger, max_epochs=3)
    text = " ".join(str(w.message) for w in caught)
    assert "cusolver exploded" in text and "disk full" in text
    assert trainer.current_epoch == 3
    rows = layer_rows(Path(logger.log_dir) / "spectral_history.jsonl")
    failed = [r for r in rows if r["step"] == BATCHES]
    assert len(failed) == 5 and all("cusolver exploded" in r["reason"] for r in failed)
    assert {r["reason_code"] for r in failed} == {"analysis_failed"}
    steps = [e.step for e in accumulator(logger.log_dir).Scalars("spectral/alpha/hidden")]
    assert steps == [0, 2 * BATCHES, 3 * BATCHES]


# ---------------------------------------------------------------------------- resume
def test_resume_continues_curves_history_and_alerts_without_gap_or_duplicate(tmp_path):
    modes = ("unfold", "operator")
    logger_dir = dict(save_dir=tmp_path, name="tb", version=0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1,
                                  filename="{epoch}", save_on_train_epoch_end=True)
    first = SpectralMonitor(conv_mode=modes)
    fit(tmp_path, [first, checkpoints], TensorBoardLogger(**logger_dir), max_epochs=3,
        enable_checkpointing=True)
    history = Path(tmp_path / "tb" / "version_0" / "spectral_history.jsonl")
    assert sorted({r["step"] for r in layer_rows(history)}) == [0, 6, 12, 18]

    # resume from the end of the 2nd epoch: the rows of the 3rd epoch are written again
    second = SpectralMonitor(conv_mode=modes)
    trainer, _ = fit(tmp_path, [second], TensorBoardLogger(**logger_dir), max_epochs=4,
                     ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    assert trainer.current_epoch == 4
    assert second.input_sizes == first.input_sizes  # restored, not probed again
    rows = layer_rows(history)
    keys = [(r["step"], r["layer"], r["mode"]) for r in rows]
    assert len(keys) == len(set(keys)) == 5 * 5 * 2
    assert sorted({r["step"] for r in rows}) == [0, 6, 12, 18, 24]
    assert [r["trigger"] for r in rows].count("fit_start") == 5 * 2
    runs = [r["event"] for r in read_history(history) if r["type"] == "run"]
    assert runs == ["start", "resume"]
    assert [e["step"] for e in second.summaries] == [0, 6, 12, 18, 24]
    assert [s.step for s in second.alert_engine.history] == [0, 6, 12, 18, 24]

    # TensorBoard: the resumed run's event file continues after the checkpoint's step, with no
    # second baseline (the first run's value at step 18, written after the checkpoint, stays in
    # its own file, as every other tag of the logger)
    files = sorted((tmp_path / "tb" / "version_0").glob("events.out.tfevents.*"))
    assert len(files) == 2
    steps = [[e.step for e in accumulator(f).Scalars("spectral/log_norm/hidden")] for f in files]
    assert steps == [[0, 6, 12, 18], [18, 24]]


def test_heatmap_history_stays_bounded_and_spans_the_whole_run():
    from svd_callback.monitor.heatmaps import HEATMAP_COLUMNS as _HEATMAP_COLUMNS
    from svd_callback.monitor.heatmaps import SpectrumStore
    from svd_callback.report import LayerReport, Report

    heatmaps = SpectrumStore()
    for i in range(3 * _HEATMAP_COLUMNS):
        svals = torch.linspace(float(i + 1), 1.0, 10)
        heatmaps.add(Report([LayerReport("fc", "linear", "unfold", svals=svals)]), i, "unfold", 3)
    store = heatmaps.spectra["unfold/fc"]
    epochs = store["epochs"]
    assert len(epochs) <= _HEATMAP_COLUMNS and store["quantiles"].shape == (len(epochs), 64)
    assert epochs[0] == 0 and epochs[-1] == 3 * _HEATMAP_COLUMNS - 1
    assert epochs == sorted(epochs)
    assert store["quantiles"][-1, 0] == 3 * _HEATMAP_COLUMNS  # the newest spectrum, top value


def test_the_former_name_of_the_summaries_warns():
    monitor = SpectralMonitor()
    with pytest.warns(DeprecationWarning, match="summaries"):
        assert monitor.history == monitor.summaries == []


def test_every_config_field_is_a_documented_constructor_argument():
    import dataclasses
    import inspect

    from svd_callback.config import AnalysisConfig, MonitorConfig

    fields = ({f.name for f in dataclasses.fields(AnalysisConfig)}
              | {f.name for f in dataclasses.fields(MonitorConfig)}) - {"analysis"}
    assert fields <= set(inspect.signature(SpectralMonitor).parameters)
    assert [f for f in fields if f not in SpectralMonitor.__doc__] == []
    monitor = SpectralMonitor(summary_stats=("mean", "median"), constant_metrics=True,
                              chunk_elems=1024, motion_sketch=4)
    config = monitor.config
    assert (config.summary_stats, config.constant_metrics, config.motion_sketch) == (
        ("mean", "median"), True, 4)
    assert config.analysis.chunk_elems == 1024


def test_the_other_legacy_keywords_still_map_with_a_warning():
    with pytest.warns(DeprecationWarning, match="max_batch_elems"):
        assert SpectralMonitor(max_batch_elems=2048).config.analysis.chunk_elems == 2048
    with pytest.warns(DeprecationWarning, match="metric groups"):
        assert "traps" in SpectralMonitor(traps=True).config.analysis.metrics
    with pytest.raises(TypeError, match="both 'chunk_elems' and its deprecated name"):
        SpectralMonitor(chunk_elems=8, max_batch_elems=16)
