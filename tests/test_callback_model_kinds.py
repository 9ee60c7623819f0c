"""SpectralMonitor on quantization-aware, pruned and compiled models, and on runs that end
mid-epoch, run as fast_dev_run or share a history file.

Each case is a seeded digits run on the CPU, compared with the same run without the monitor, or
with an oracle computed from the model at the moment of the analysis.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers import digits_fit
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.utils import prune

from svd_callback.callback import SpectralMonitor
from svd_callback.examples import SmallCNN
from svd_callback.layers import find_layers, frozen_forward, named_modules
from svd_callback.sinks.history import read_history
from svd_callback.sinks.history_rows import read_analyses

LAYERS = ["features.0", "features.2", "features.5", "hidden", "classifier"]


def fit(root: Path, callbacks=(), model=None, max_epochs: int = 2, **options):
    settings = dict(limit_train_batches=4, limit_val_batches=1, num_sanity_val_steps=0,
                    batch_size=32, quiet=True)
    settings.update(options)
    return digits_fit(root, callbacks, model, max_epochs=max_epochs, **settings)


def every_forward_monitor(**kwargs) -> SpectralMonitor:
    """The operator input-size probe, the class probe, an analysis every second step."""
    options = dict(conv_mode=("unfold", "operator"), every_n_steps=2, figures_every_n=0,
                   class_analysis={"probe_size": 64})
    options.update(kwargs)
    return SpectralMonitor(**options)


# ---------------------------------------------------------------------------- probe forwards
def qat_cnn() -> SmallCNN:
    """SmallCNN prepared for quantization-aware training: fake-quantized weights (per-channel
    observers) and activations (observers on every layer's output)."""
    model = SmallCNN()
    model.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
    model.train()
    return torch.ao.quantization.prepare_qat(model)


def test_quantization_aware_training_is_unchanged_by_the_monitor(tmp_path):
    """The observers and fake-quantize modules update in eval mode too: without restoring
    their buffers around the probe forwards, weights, min/max, scales and zero points differ."""
    _, plain = fit(tmp_path / "plain", [], qat_cnn)
    monitor = every_forward_monitor()
    _, watched = fit(tmp_path / "watched", [monitor], qat_cnn)
    assert monitor.schedule.analyses == 5 and len(monitor.input_sizes) == 3
    rows = read_history(tmp_path / "watched" / "spectral_history.jsonl")
    assert {r["step"] for r in rows if r["type"] == "class"} == {0, 2, 4, 6, 8}
    state, expected = watched.state_dict(), plain.state_dict()
    observers = [k for k in expected if k.endswith(("scale", "zero_point", "min_val",
                                                    "max_val"))]
    assert len(observers) >= 20
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


class _MutatingModule(nn.Module):
    """A forward that changes its buffers whatever its mode: in place, by resizing, by
    replacing the tensor and by registering a new one."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("seen", torch.zeros(0))
        self.register_buffer("last", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += 1
        self.seen.resize_(x.shape[0]).copy_(x[:, 0])
        self.last = x.mean(0).clone()
        self.register_buffer("extra", torch.ones(2))
        return self.linear(x)


def test_frozen_forward_restores_every_buffer():
    model = nn.Sequential(_MutatingModule(), nn.BatchNorm1d(3))
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    objects = {name: id(buffer) for name, buffer in model.named_buffers()}
    with frozen_forward(model):
        model(torch.randn(4, 3))
        assert model[0].count == 1 and "extra" in model[0]._buffers
    assert model.training and model[1].training
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value) and after[name].shape == value.shape, name
    assert {name: id(buffer) for name, buffer in model.named_buffers()} == objects


# ---------------------------------------------------------------------------- pruned weights
def pruned_cnn() -> SmallCNN:
    model = SmallCNN()
    for module in (model.features[2], model.hidden, model.classifier):
        prune.l1_unstructured(module, "weight", amount=0.5)
    return model


class _PrunedOracle(Callback):
    """After the monitor's step analysis: its singular values against svdvals of
    ``weight_orig * weight_mask`` now, and of the stale ``module.weight``."""

    def __init__(self, monitor: SpectralMonitor) -> None:
        self.monitor = monitor
        self.compared: list[tuple[int, str, bool, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        result = self.monitor.last_result
        if result is None or result.step != trainer.global_step:
            return
        for name in ("features.2", "hidden", "classifier"):
            module = dict(pl_module.named_modules())[name]
            record = result.report.get(name, "unfold")
            current = (module.weight_orig * module.weight_mask).detach().flatten(1).double()
            stale = module.weight.detach().flatten(1).double()
            svals = record.svals.double()
            self.compared.append((
                trainer.global_step, name,
                torch.allclose(svals, torch.linalg.svdvals(current), rtol=1e-4, atol=1e-6),
                torch.allclose(svals, torch.linalg.svdvals(stale), rtol=1e-4, atol=1e-6),
            ))


def test_pruned_weights_are_read_as_the_next_forward_computes_them(tmp_path):
    specs, _ = find_layers(pruned_cnn())
    assert [s.name for s in specs] == LAYERS
    monitor = SpectralMonitor(every_n_steps=1, figures_every_n=0)
    oracle = _PrunedOracle(monitor)
    fit(tmp_path, [monitor, oracle], pruned_cnn)
    assert len(oracle.compared) == 3 * 8  # three pruned layers at each of the 8 steps
    assert all(fresh for _, _, fresh, _ in oracle.compared)
    # module.weight is one optimizer step late: reading it would have been wrong every time
    assert not any(stale for _, _, _, stale in oracle.compared)


# ---------------------------------------------------------------------------- progress
def test_epochs_trained_of_an_epoch_cut_short_by_max_steps(tmp_path):
    monitor = SpectralMonitor(figures_every_n=0)
    fit(tmp_path, [monitor], max_epochs=5, max_steps=6)  # 4 batches per epoch: 1.5 epochs
    rows = [r for r in read_history(tmp_path / "spectral_history.jsonl")
            if r["type"] == "summary"]
    assert [(r["step"], r["epoch"], r["epochs_trained"]) for r in rows] == [
        (0, 0, 0.0), (4, 1, 1.0), (6, 1, 1.5)]


def test_fast_dev_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monitor = SpectralMonitor(class_analysis={"probe_size": 32})
    fit(tmp_path, [monitor], fast_dev_run=True, logger=True)
    assert monitor.schedule.analyses >= 1  # analysed, as fast_dev_run is for trying it out
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- compiled models
class _CompiledFeatures(SmallCNN):
    """SmallCNN whose conv stack is compiled (``features._orig_mod.0`` ...); the eager backend
    traces with TorchDynamo as torch.compile does, without generating C++ code."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.compile(self.features, backend="eager")


@pytest.mark.slow  # TorchDynamo's first import and trace take ~10 s
def test_a_compiled_model_is_analysed_under_its_original_names(tmp_path):
    assert [n for n, _ in named_modules(_CompiledFeatures())] == [
        n for n, _ in named_modules(SmallCNN())]
    runs = {}
    for name, model in (("plain", SmallCNN), ("compiled", _CompiledFeatures)):
        monitor = SpectralMonitor(conv_mode=("unfold", "operator"), figures_every_n=0,
                                  per_layer_callback_metrics=True,
                                  class_analysis={"probe_size": 32},
                                  figure_layers=["features.0"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer, _ = fit(tmp_path / name, [monitor], model, max_epochs=1,
                             limit_train_batches=2)
        rows = read_history(tmp_path / name / "spectral_history.jsonl")
        runs[name] = (sorted(trainer.callback_metrics), monitor.input_sizes,
                      sorted({(r["type"], r.get("layer"), r.get("normalized_by"), r.get("reason"))
                              for r in rows if r["type"] in ("layer", "class")}))
    assert runs["compiled"] == runs["plain"]
    tags, sizes, records = runs["compiled"]
    assert "spectral/alpha.operator/features.5" in tags and len(sizes) == 3
    assert {layer for kind, layer, _, _ in records if kind == "class"} == set(LAYERS)


# ---------------------------------------------------------------------------- run ids
def test_each_run_has_its_own_id_in_every_row(tmp_path):
    for _ in range(2):  # two runs appending to one file
        fit(tmp_path, [SpectralMonitor(figures_every_n=0)], max_epochs=1)
    rows = read_history(tmp_path / "spectral_history.jsonl")
    ids = [r["run_id"] for r in rows]
    assert all(isinstance(i, str) and len(i) == 32 for i in ids)
    starts = [r["run_id"] for r in rows if r["type"] == "run"]
    assert len(starts) == 2 and starts[0] != starts[1]
    assert ids == sorted(ids, key=starts.index)  # the first run's rows, then the second's
    # the library's reader of analyses reads one run: mixing two would merge their analyses
    with pytest.raises(ValueError, match="several runs"):
        read_analyses(rows)
    second = read_analyses(r for r in rows if r["run_id"] == starts[1])
    assert [(a.epoch, a.step, len(a.report)) for a in second] == [
        (0, 0, len(LAYERS)), (1, 4, len(LAYERS))]
