"""SpectralMonitor on awkward models and runs: parametrized and lazy weights, dict batches,
resumes (TensorBoard purge, training rows, a lost history file), two monitors in one Trainer.

Each case is a seeded digits run on the CPU, compared with the same run without the monitor, or
read back from the TensorBoard event files and the history file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import digits_fit
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations
from torch.utils.data import DataLoader, Dataset

from svd_callback.callback import SpectralMonitor
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.layers import find_layers
from svd_callback.sinks.history import read_history

BATCHES = 4
LAYERS = ["features.0", "features.2", "features.5", "hidden", "classifier"]


def fit(root: Path, callbacks=(), model=None, max_epochs: int = 2, seed: int = 0, logger=False,
        ckpt_path=None, datamodule=None, quiet=True, **options):
    """A seeded digits run; returns (trainer, model). ``model``: a factory called after seeding;
    ``quiet``: hide the warnings."""
    settings = dict(limit_train_batches=BATCHES, limit_val_batches=1, num_sanity_val_steps=0,
                    log_every_n_steps=1)
    settings.update(options)
    return digits_fit(root, callbacks, model, max_epochs=max_epochs, seed=seed, logger=logger,
                      ckpt_path=ckpt_path, datamodule=datamodule, batch_size=32, quiet=quiet,
                      **settings)


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


def full_monitor(**kwargs) -> SpectralMonitor:
    """Every forward the callback may run: operator probe, class probe, every step."""
    options = dict(conv_mode=("unfold", "operator"), every_n_steps=2, figures_every_n=0,
                   class_analysis={"probe_size": 64})
    options.update(kwargs)
    return SpectralMonitor(**options)


# ---------------------------------------------------------------------------- parametrizations
class _ParametrizedCNN(SmallCNN):
    """SmallCNN with spectral_norm and weight_norm, each in the parametrization and the hook API."""

    def __init__(self) -> None:
        super().__init__()
        parametrizations.spectral_norm(self.features[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the hook APIs are deprecated
            torch.nn.utils.spectral_norm(self.features[2])
            torch.nn.utils.weight_norm(self.classifier)
        parametrizations.weight_norm(self.hidden)


def test_parametrized_weights_are_read_without_changing_the_training(tmp_path):
    model = _ParametrizedCNN()
    specs, skipped = find_layers(model)
    assert [s.name for s in specs] == LAYERS and skipped == []  # no parametrization "layer"
    u = model.features[0].parametrizations.weight[0]._u.clone()
    model.train()
    weight = specs[0].weight  # read in train mode: no power iteration
    assert torch.equal(model.features[0].parametrizations.weight[0]._u, u)
    model.eval()
    assert torch.equal(weight, model.features[0].weight)  # the eval-mode (next forward) weight
    with torch.no_grad():  # the hook API: recomputed from the parameters, no power iteration
        hook_u = model.features[2].weight_u.clone()
        expected = model.features[2].weight_orig / torch.dot(
            hook_u, model.features[2].weight_orig.flatten(1) @ model.features[2].weight_v)
        assert torch.allclose(specs[1].weight, expected)
        assert torch.equal(model.features[2].weight_u, hook_u)

    _, plain = fit(tmp_path / "plain", [], model=_ParametrizedCNN)
    monitor = full_monitor()
    _, watched = fit(tmp_path / "watched", [monitor], model=_ParametrizedCNN)
    assert monitor.schedule.analyses >= 4 and len(monitor.input_sizes) == 3
    assert_same_weights(plain.state_dict(), watched.state_dict())


# ---------------------------------------------------------------------------- lazy modules
class _LazyCNN(SmallCNN):
    """SmallCNN whose first conv and hidden layer are lazy (materialised by the first forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.features[0] = nn.LazyConv2d(16, 3, padding=1)
        self.hidden = nn.LazyLinear(64)


def test_lazy_modules_are_skipped_until_the_models_own_first_forward(tmp_path):
    _, plain = fit(tmp_path / "plain", [], model=_LazyCNN)
    monitor = full_monitor()
    _, watched = fit(tmp_path / "watched", [monitor], model=_LazyCNN)
    assert_same_weights(plain.state_dict(), watched.state_dict())
    # sizes recorded at the first analysis after the first training step; classes from then on
    assert monitor.input_sizes == {"features.0": (8, 8), "features.2": (8, 8),
                                    "features.5": (4, 4)}
    rows = read_history(tmp_path / "watched" / "spectral_history.jsonl")
    first = {r["layer"]: r for r in rows if r["type"] == "layer" and r["step"] == 0}
    assert "lazy module not materialised" in first["hidden"]["reason"]
    assert "lazy module not materialised" in first["features.0"]["reason"]
    later = [r for r in rows if r["type"] == "layer" and r["step"] == 2 and r["mode"] == "operator"]
    assert {r["layer"] for r in later if r["reason"] is None} >= {"features.0", "hidden"}
    assert sorted({r["step"] for r in rows if r["type"] == "class"}) == [2, 4, 6, 8]


# ---------------------------------------------------------------------------- resume
def accumulator(log_dir) -> EventAccumulator:
    """The whole run directory as TensorBoard's server reads it (every event file, orphans
    purged; scalars, histograms and text as tensors)."""
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def test_resume_in_the_same_log_dir_purges_orphans_and_keeps_training_rows(tmp_path):
    """Resuming from an older checkpoint in the same log directory: TensorBoard shows one value
    per step (the resumed run's), and the history keeps the 'training' rows an uninterrupted
    run writes (the losses logged before the checkpoint are in the monitor's state)."""
    def monitor():
        return SpectralMonitor(every_n_steps=3, figures_every_n=0)

    def logger():
        return TensorBoardLogger(tmp_path, name="tb", version=0)

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}",
                                  save_on_train_epoch_end=True)
    fit(tmp_path, [monitor(), checkpoints], max_epochs=3, logger=logger(),
        enable_checkpointing=True)
    log_dir = tmp_path / "tb" / "version_0"
    history = log_dir / "spectral_history.jsonl"
    uninterrupted = [(r["step"], sorted(r["metrics"])) for r in read_history(history)
                     if r["type"] == "training"]
    steps = [0, 3, 4, 6, 8, 9, 12]
    assert [e.step for e in accumulator(log_dir).Tensors("spectral/alpha/hidden")] == steps

    # TensorBoard reads event files in name order, <seconds>.<host>.<pid>.<counter>: in one
    # process within one second the counter (".9" after ".10") could put the resumed file first
    time.sleep(1.1)
    fit(tmp_path, [monitor()], max_epochs=3, logger=logger(),
        ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    acc = accumulator(log_dir)
    for tag in ("spectral/alpha/hidden", "all_layers/alpha_mean", "alerts/total"):
        assert [e.step for e in acc.Tensors(tag)] == steps, tag
    assert [e.step for e in acc.Tensors("spectra/unfold/hidden")] == steps
    resumed = [(r["step"], sorted(r["metrics"])) for r in read_history(history)
               if r["type"] == "training"]
    assert resumed == uninterrupted and [s for s, _ in resumed] == [4, 6, 8, 9, 12]


def test_a_resume_whose_history_file_is_gone_warns(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}",
                                  save_on_train_epoch_end=True)
    fit(tmp_path, [SpectralMonitor(figures_every_n=0), checkpoints], max_epochs=2,
        enable_checkpointing=True)
    history = tmp_path / "spectral_history.jsonl"
    history.unlink()
    with pytest.warns(UserWarning, match="spectral history .* is gone.*from step 4 on"):
        fit(tmp_path, [SpectralMonitor(figures_every_n=0)], max_epochs=2, quiet=False,
            ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    rows = read_history(history)
    assert [r["event"] for r in rows if r["type"] == "run"] == ["resume"]
    assert sorted({r["step"] for r in rows if r["type"] == "layer"}) == [8]


# ---------------------------------------------------------------------------- two monitors
def test_two_monitors_in_one_trainer_write_their_own_history_files(tmp_path):
    first = SpectralMonitor(conv_mode="unfold", figures_every_n=0)
    second = SpectralMonitor(conv_mode="slices", figures_every_n=0)
    with pytest.warns(UserWarning, match="same history file.*spectral_history-2.jsonl"):
        fit(tmp_path, [first, second], max_epochs=1, quiet=False)
    for name, mode in (("spectral_history.jsonl", "unfold"), ("spectral_history-2.jsonl",
                                                             "slices")):
        rows = read_history(tmp_path / name)
        assert [r["event"] for r in rows if r["type"] == "run"] == ["start"], name
        assert {r["mode"] for r in rows if r["type"] == "layer"} == {mode}, name
        assert len([r for r in rows if r["type"] == "layer"]) == 2 * len(LAYERS), name


# ---------------------------------------------------------------------------- dict batches
class _DictDigits(DigitsDataModule):
    """The digits data as dict batches ``{"x": images, "y": labels}``."""

    def train_dataloader(self):
        return DataLoader(_AsDicts(self.train_set), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(_AsDicts(self.val_set), batch_size=self.batch_size)


class _AsDicts(Dataset):
    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return {"x": x, "y": y}


class _DictCNN(SmallCNN):
    """A model whose forward reads the dict batch (``needs``: the keys it reads)."""

    def __init__(self, needs=("x",)) -> None:
        super().__init__()
        self.example_input_array = None
        self.needs = needs

    def forward(self, batch):
        scale = batch["scale"] if "scale" in self.needs else 1.0
        return super().forward(batch["x"] * scale)

    def _step(self, batch, stage):
        loss = F.cross_entropy(self({**batch, "scale": 1.0}), batch["y"])
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        return loss


def test_dict_batches_reach_the_operator_and_class_probes(tmp_path):
    """Default: the model gets {"x": inputs}; a forward needing more keys takes forward_fn."""
    monitor = full_monitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "default", [monitor], model=_DictCNN,
            datamodule=_DictDigits(batch_size=32), max_epochs=1, quiet=False)
    rows = read_history(tmp_path / "default" / "spectral_history.jsonl")
    assert not [str(w.message) for w in caught if "SpectralMonitor" in str(w.message)]
    assert set(monitor.input_sizes) == {"features.0", "features.2", "features.5"}
    assert sorted({r["step"] for r in rows if r["type"] == "class"}) == [0, 2, 4]

    def forward_fn(model, inputs):
        return model({"x": inputs, "scale": 1.0})

    monitor = full_monitor(forward_fn=forward_fn)
    fit(tmp_path / "forward_fn", [monitor], model=lambda: _DictCNN(("x", "scale")),
        datamodule=_DictDigits(batch_size=32), max_epochs=1)
    rows = read_history(tmp_path / "forward_fn" / "spectral_history.jsonl")
    assert set(monitor.input_sizes) == {"features.0", "features.2", "features.5"}
    assert sorted({r["step"] for r in rows if r["type"] == "class"}) == [0, 2, 4]


_KILLED_RUN = """
import os, signal, sys
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from svd_callback.callback import SpectralMonitor
from svd_callback.examples import DigitsDataModule, SmallCNN

class Kill(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 7:
            os.kill(os.getpid(), signal.SIGKILL)

root = sys.argv[1]
pl.seed_everything(0, verbose=False)
checkpoints = ModelCheckpoint(dirpath=root + "/ckpt", save_top_k=-1, filename="{epoch}",
                              save_on_train_epoch_end=True)
pl.Trainer(
    accelerator="cpu", devices=1, max_epochs=3, limit_train_batches=4, limit_val_batches=1,
    num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
    logger=TensorBoardLogger(root, name="tb", version=0), log_every_n_steps=1,
    callbacks=[SpectralMonitor(every_n_steps=3, figures_every_n=0), Kill(), checkpoints],
).fit(SmallCNN(), DigitsDataModule(batch_size=32))
"""


def test_resume_after_a_sigkill_shows_one_value_per_step(tmp_path):
    """Killed at step 7 (an analysis at step 6 on disk), resumed from the step-4 checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    log_dir = tmp_path / "tb" / "version_0"
    assert [e.step for e in accumulator(log_dir).Tensors("spectral/alpha/hidden")] == [0, 3, 4, 6]
    time.sleep(1.1)  # the resumed event file sorts after the killed one
    fit(tmp_path, [SpectralMonitor(every_n_steps=3, figures_every_n=0)], max_epochs=3,
        logger=TensorBoardLogger(tmp_path, name="tb", version=0),
        ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    acc = accumulator(log_dir)
    steps = [0, 3, 4, 6, 8, 9, 12]
    for tag in ("spectral/alpha/hidden", "alerts/total", "spectra/unfold/hidden"):
        assert [e.step for e in acc.Tensors(tag)] == steps, tag
    rows = read_history(log_dir / "spectral_history.jsonl")
    keys = [(r["step"], r["layer"]) for r in rows if r["type"] == "layer"]
    assert len(keys) == len(set(keys)) == len(steps) * len(LAYERS)
