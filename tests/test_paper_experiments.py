"""The paper-scale experiments' plumbing: the missing-data stop, the spread over seeds, the
named RESULTS blocks, the per-epoch state saver and ``make data`` without apt. Nothing here
reads Fashion-MNIST or trains a ResNet."""

from __future__ import annotations

import itertools
import math
import shutil
import subprocess

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from experiments import common
from experiments.data_check import FASHION_MNIST_FILES, missing_fashion_mnist
from experiments.seed_stats import cluster_interval, proportion, spread, wilson_interval


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
    from experiments.rmt_validation import wide

    def no_training(*args, **kwargs):  # the stop must come before any data or training
        raise AssertionError("reached training")

    monkeypatch.setattr(resnet_checkpoints, "trained_run", no_training)
    monkeypatch.setattr(pl, "seed_everything", no_training)
    empty = str(tmp_path)
    out = ["--derived", str(tmp_path / "derived"), "--results", str(tmp_path / "R.md")]
    _stops(capsys, resnet_checkpoints.main, ["--root", empty])
    _stops(capsys, wide.main, ["--root", empty])
    for main in (rmt.main, cs.main, fr.main):
        _stops(capsys, main, ["--root", empty, *out])
    assert not (tmp_path / "R.md").exists() and not (tmp_path / "derived").exists()


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


def test_spread_bootstraps_the_mean_over_seeds_exactly():
    # three seeds: the resample of three copies of the smallest value has probability 1/27 >
    # 2.5%, so the exact 95% percentile interval is the range of the values
    s = spread([3.0, 1.0, float("nan"), 2.0])
    assert s.n == 3 and s.mean == pytest.approx(2.0) and s.std == pytest.approx(1.0)
    assert (s.low, s.high) == (1.0, 3.0) and (s.ci_low, s.ci_high) == (1.0, 3.0)
    # five seeds: brute force over all 5^5 ordered resamples
    values = [0.0, 2.0, 4.0, 6.0, 9.0]
    means = sorted(sum(values[i] for i in idx) / 5
                   for idx in itertools.product(range(5), repeat=5))
    low = means[math.ceil(0.025 * len(means)) - 1]
    high = means[math.ceil(0.975 * len(means)) - 1]
    s = spread(values)
    assert (s.ci_low, s.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert s.low < s.ci_low < s.ci_high < s.high
    one = spread([0.5])
    assert one.n == 1 and math.isnan(one.std) and "one seed" in one.text()
    assert spread([]).text() == "no finite value"
    assert "bootstrap 95% [1, 3]" in spread([1, 2, 3]).text()


def test_cluster_interval_resamples_whole_clusters():
    # two clusters of different sizes: resamples (a, a), (a, b), (b, a), (b, b) -> pooled means
    a, b = [0.0, 0.0, 0.0], [1.0]
    assert cluster_interval([a, b]) == (0.0, 1.0)
    # brute force for three clusters and the median as the statistic
    clusters = [[1.0, 2.0], [5.0], [3.0, 8.0, 9.0]]
    values = sorted(float(np.median(np.concatenate([clusters[i] for i in idx])))
                    for idx in itertools.product(range(3), repeat=3))
    assert cluster_interval(clusters, lambda x: float(np.median(x)), level=0.5) == (
        values[math.ceil(0.25 * 27) - 1], values[math.ceil(0.75 * 27) - 1])


def test_wilson_interval_against_scipy_and_textbook_values():
    from scipy.stats import binomtest

    for k, n in [(0, 3), (3, 3), (2, 3), (13, 15), (0, 1), (7, 20)]:
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson_interval(k, n) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # Agresti & Coull (1998): 0 of 10 -> [0, 0.2775]
    assert wilson_interval(0, 10)[1] == pytest.approx(0.27753, abs=1e-5)
    p = proportion(15, 15)
    assert p.fraction == 1.0 and p.high == 1.0 and p.low == pytest.approx(0.7961, abs=1e-4)
    assert p.text() == "15/15 (Wilson 95% [0.80, 1.00])"
    assert math.isnan(wilson_interval(0, 0)[0])
    with pytest.raises(ValueError):
        wilson_interval(4, 3)


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
