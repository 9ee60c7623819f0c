"""The paper-scale experiments' plumbing: the missing-data stop, the spread over seeds, the
named RESULTS blocks, the per-epoch state saver and ``make data`` without apt. Nothing here
reads Fashion-MNIST or trains a ResNet."""

from __future__ import annotations

import math
import shutil
import subprocess

import lightning.pytorch as pl
import pytest
import torch

from experiments import common
from experiments.data_check import FASHION_MNIST_FILES, missing_fashion_mnist
from experiments.seed_stats import spread


def _stops(capsys, main, argv) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make data" in err and "--root" in err
    assert "Traceback" not in err


def test_experiments_stop_at_start_when_the_data_is_missing(tmp_path, capsys, monkeypatch):
    from experiments import resnet_checkpoints
    from experiments.class_structure import run as cs
    from experiments.factorization_rank import run as fr
    from experiments.rmt_validation import run as rmt

    def no_training(*args, **kwargs):  # the stop must come before any data or training
        raise AssertionError("reached training")

    monkeypatch.setattr(resnet_checkpoints, "trained_run", no_training)
    monkeypatch.setattr(pl, "seed_everything", no_training)
    empty = str(tmp_path)
    out = ["--out", str(tmp_path / "out"), "--results", str(tmp_path / "R.md")]
    _stops(capsys, resnet_checkpoints.main, ["--root", empty])
    for main in (rmt.main, cs.main, fr.main):
        _stops(capsys, main, ["--root", empty, "--model", "resnet", *out])
        _stops(capsys, main, ["--root", empty, "--dataset", "fashion", *out])
    assert not (tmp_path / "R.md").exists()


def test_the_training_cli_stops_when_the_data_is_missing(tmp_path, capsys, monkeypatch):
    from experiments.train import main

    monkeypatch.setattr("sys.argv", ["train"])
    config = common.REPO / "configs" / "fashion_mnist_cnn.yaml"
    _stops(capsys, main, ["fit", "--config", str(config), "--data.init_args.root",
                          str(tmp_path), "--trainer.logger", "false"])


def test_missing_files_are_named_and_root_is_honoured(tmp_path):
    assert missing_fashion_mnist(tmp_path) == list(FASHION_MNIST_FILES)
    for name in FASHION_MNIST_FILES[1:]:
        (tmp_path / name).write_bytes(b"")
    assert missing_fashion_mnist(tmp_path) == [FASHION_MNIST_FILES[0]]
    (tmp_path / FASHION_MNIST_FILES[0]).write_bytes(b"")
    assert missing_fashion_mnist(tmp_path) == []


def test_digits_runs_do_not_ask_for_fashion_mnist(tmp_path):
    from experiments.class_structure import run as cs

    args = cs.parse_args(["--dataset", "digits", "--root", str(tmp_path)])
    assert args.dataset == "digits" and args.model == "smallcnn"


def test_spread_matches_the_textbook_t_interval():
    # t_{0.975, 2} = 4.303 (Student-t table); mean 2, sample std 1 for (1, 2, 3)
    s = spread([3.0, 1.0, float("nan"), 2.0])
    assert s.n == 3 and s.mean == pytest.approx(2.0) and s.std == pytest.approx(1.0)
    assert (s.low, s.high) == (1.0, 3.0)
    half = 4.302652729911275 / math.sqrt(3)
    assert (s.ci_low, s.ci_high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    # t_{0.975, 4} = 2.776 for five values 0, 2, 4, 6, 8 (mean 4, std sqrt(10))
    s = spread([0, 2, 4, 6, 8])
    assert s.ci_high - s.mean == pytest.approx(2.7764451051977987 * math.sqrt(10 / 5))
    one = spread([0.5])
    assert one.n == 1 and math.isnan(one.std) and "one seed" in one.text()
    assert spread([]).text() == "no finite value"


def test_named_results_block_is_appended_then_replaced_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    common.write_results(path, "T", "small scale")
    path.write_text(path.read_text() + "\nhand-written discussion\n")
    common.write_results(path, "T", "resnet numbers 1", block_name="resnet")
    common.write_results(path, "T", "resnet numbers 2", block_name="resnet")
    common.write_results(path, "T", "small scale again")
    text = path.read_text()
    assert "small scale again" in text and "hand-written discussion" in text
    assert "resnet numbers 2" in text and "resnet numbers 1" not in text
    assert text.count("(resnet): begin") == 1 and text.count(common.BEGIN_MARK) == 1
    assert text.index("hand-written discussion") < text.index("resnet numbers 2")


def test_save_states_keeps_the_initial_and_every_epochs_weights():
    from experiments.common import trainer_for
    from experiments.resnet_checkpoints import SaveStates
    from svd_callback.examples import DigitsDataModule, SmallCNN

    pl.seed_everything(0, workers=True, verbose=False)
    model = SmallCNN(image_size=8, width=4, hidden=8)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    saver = SaveStates()
    trainer_for(2, [saver]).fit(model, datamodule=DigitsDataModule(batch_size=256, limit=256))
    assert sorted(saver.states) == [0, 1, 2]
    for key, value in initial.items():
        assert torch.equal(saver.states[0][key], value)
        assert torch.equal(saver.states[2][key], model.state_dict()[key])
    assert not torch.equal(saver.states[1]["hidden.weight"], initial["hidden.weight"])
    assert not torch.equal(saver.states[2]["hidden.weight"], saver.states[1]["hidden.weight"])


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_data_without_apt_says_what_to_do(tmp_path):
    make = shutil.which("make")
    result = subprocess.run([make, "-s", "-C", str(common.REPO), "data",
                             f"FASHION_MNIST_ROOT={tmp_path}"], env={"PATH": str(tmp_path)},
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "apt-get not found" in result.stderr and "--root FOLDER" in result.stderr
