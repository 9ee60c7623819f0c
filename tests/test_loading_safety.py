"""Loading a user's file never runs code from it: ``torch.load(weights_only=True)`` everywhere,
a full unpickle only behind ``--unsafe-load`` / ``trust_pickle=True``; ordinary files (Lightning
checkpoints, state dicts, ``torch.nn`` models saved whole) still load by the safe path."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from helpers import digits_fit, run_cli
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from svd_callback.callback import SpectralMonitor
from svd_callback.examples import SmallCNN
from svd_callback.loading import UNSAFE_LOAD_OPTION, ModelLoadError, load_model


class _CreatesAFile:
    """Unpickling this object calls ``open(target, "w")``: the file appears if the load runs
    code from the pickle."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def _crafted(tmp_path: Path, how: str) -> tuple[Path, Path]:
    target = tmp_path / f"created_by_{how}"
    path = tmp_path / f"{how}.pt"
    if how == "bare":
        torch.save(_CreatesAFile(target), path)
    elif how == "state_dict":
        torch.save({"state_dict": _CreatesAFile(target)}, path)
    else:  # a raw pickle, not torch.save's zip format
        with path.open("wb") as handle:
            pickle.dump(_CreatesAFile(target), handle)
    return path, target


@pytest.mark.parametrize("how", ["bare", "state_dict", "raw_pickle"])
def test_a_crafted_pickle_runs_no_code_and_the_error_names_the_option(capsys, tmp_path, how):
    path, target = _crafted(tmp_path, how)
    code, out, err = run_cli(capsys, "analyze", path, "--no-progress")
    assert not target.exists()
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert UNSAFE_LOAD_OPTION in err and "arbitrary code" in err
    with pytest.raises(ModelLoadError, match=UNSAFE_LOAD_OPTION):
        load_model(str(path))
    assert not target.exists()
    # the option does what its help says: the full unpickle runs the file's code
    code, _, err = run_cli(capsys, "analyze", path, "--no-progress", UNSAFE_LOAD_OPTION)
    assert target.exists() and code == 2 and "Traceback" not in err


def test_unsafe_load_help_says_it_runs_code(capsys):
    code, out, _ = run_cli(capsys, "analyze", "--help")
    assert code == 0
    help_text = " ".join(out.split())
    assert f"{UNSAFE_LOAD_OPTION} unpickle the file in full" in help_text
    assert "runs any code hidden in the file" in help_text


@pytest.fixture
def weights_only_calls(monkeypatch) -> list[object]:
    """The ``weights_only`` argument of every ``torch.load`` call."""
    calls: list[object] = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_ordinary_files_load_by_the_safe_path(capsys, tmp_path, weights_only_calls):
    """A Lightning checkpoint (optimizer, loops, ModelCheckpoint, EarlyStopping and
    SpectralMonitor state, hyper-parameters), a state dict and a torch.nn model saved whole."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    stop = EarlyStopping(monitor="val_loss")
    monitor = SpectralMonitor(figures_every_n=0, class_analysis={"probe_size": 32})
    _, model = digits_fit(tmp_path, [checkpoints, stop, monitor], max_epochs=1, quiet=True,
                          enable_checkpointing=True, limit_train_batches=2, limit_val_batches=1,
                          num_sanity_val_steps=0)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    code, out, err = run_cli(capsys, "analyze", ckpt, "--no-progress", "--model-class",
                             "svd_callback.examples:SmallCNN")
    assert code == 0, err
    assert "features.0" in out and "weights only" not in out
    rebuilt, note = load_model(str(ckpt), model_class="svd_callback.examples:SmallCNN")
    assert note is None
    for name, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name

    torch.save(model.state_dict(), tmp_path / "state.pt")
    code, out, err = run_cli(capsys, "analyze", tmp_path / "state.pt", "--no-progress")
    assert code == 0 and "classifier" in out, err
    layers = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                 torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 3))
    torch.save(layers, tmp_path / "whole.pt")
    loaded, note = load_model(str(tmp_path / "whole.pt"))
    assert note is None and isinstance(loaded, torch.nn.Sequential)
    assert torch.equal(loaded[0].weight, layers[0].weight)
    assert weights_only_calls and set(weights_only_calls) == {True}


def test_a_model_class_outside_torch_nn_is_refused_by_name(capsys, tmp_path):
    torch.save(SmallCNN(), tmp_path / "whole.pt")
    code, _, err = run_cli(capsys, "analyze", tmp_path / "whole.pt", "--no-progress")
    assert code == 2 and err.count("\n") == 1, err
    assert "svd_callback.examples.models.SmallCNN" in err and UNSAFE_LOAD_OPTION in err
    code, out, err = run_cli(capsys, "analyze", tmp_path / "whole.pt", "--no-progress",
                             UNSAFE_LOAD_OPTION)
    assert code == 0 and "features.0" in out, err
