"""experiments/tempbalance: one-epoch runs of both pairs and their report, the run cache, and
the statistics against textbook values."""

from __future__ import annotations

import json
import math
import os

import pytest

from experiments.tempbalance import run
from svd_callback.examples.data import FASHION_MNIST_ROOT

TINY_RESNET = {"train_size": 256, "val_size": 256}


def test_digits_runs_and_report():
    rows = [run.run_one("digits", arm, seed, epochs=1) for seed in (0, 1) for arm in run.ARMS]
    assert all(0.0 <= r["final_acc"] <= r["best_acc"] <= 1.0 for r in rows)
    assert rows[0]["factors"] is None
    assert sorted(rows[1]["factors"]) == ["features.2", "features.5", "hidden"]
    assert len(rows[1]["train_epoch_seconds"]) == 1 and rows[1]["refit_seconds"][0] > 0
    text = run.report(rows)
    assert "Decision rule (protocol): **" in text and "digits-only version" in text
    assert "| baseline |" in text and "| tempbalance |" in text
    assert "Trained by: `" in text and "ratio of min" in text


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_ROOT), reason="Fashion-MNIST not installed")
def test_resnet_rates_follow_the_plan_and_the_cosine():
    row = run.run_one("resnet", "tempbalance", 0, epochs=2, data=TINY_RESNET)
    checks = row["checks"]
    # shapes of ResNet-8 width 16: 3x3 convs give 9 * min(out, in) eigenvalues, 1x1 shortcuts
    # min(out, in) = 16 and 32 (< 50)
    assert checks["tuned"] == [f"stage{s}.0.conv{c}" for s in (1, 2, 3) for c in (1, 2)]
    assert checks["untuned"] == {
        "stem": "first layer", "head": "last layer",
        "stage2.0.shortcut.0": "16 eigenvalues < eigs_thresh=50",
        "stage3.0.shortcut.0": "32 eigenvalues < eigs_thresh=50",
    }
    assert checks["norm_of"] == {n.replace("conv", "bn"): n for n in checks["tuned"]}
    scheduled = [e["scheduled"] for e in checks["epochs"]]
    assert scheduled == pytest.approx([0.05, 0.025])  # cos(0), cos(pi / 2) halfway
    for epoch in checks["epochs"]:
        assert epoch["norm_shares_conv_rate"]
        assert epoch["max_rel_error_untuned"] < 1e-12 and epoch["max_rel_error_tuned"] < 1e-12
        # the factors span [0.5, 1.5] (tb_linear_map): a rate without its factor would show
        assert epoch["tuned_min"] == pytest.approx(0.5 * epoch["scheduled"])
        assert epoch["tuned_max"] == pytest.approx(1.5 * epoch["scheduled"])


def test_cache_is_used_only_for_the_same_settings(tmp_path, monkeypatch):
    first = run.cached_or_run(tmp_path, "digits", "baseline", 0, 1, {}, retrain=False)
    monkeypatch.setattr(run, "run_one", lambda *a, **k: pytest.fail("retrained"))
    again = run.cached_or_run(tmp_path, "digits", "baseline", 0, 1, {}, retrain=False)
    assert again == json.loads(json.dumps(first))
    assert run.cached_or_run(tmp_path, "digits", "baseline", 0, 2, {}, retrain=False,
                             train=False) is None


def test_t_interval_and_verdict_match_textbook_values():
    # t_{0.975, 2} = 4.303 (Student-t tables); mean 2, s = 1, n = 3
    mean, low, high = run.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert mean - low == pytest.approx(high - mean)
    assert run.verdict(0.1, 0.3) == "helps" and run.verdict(-0.3, -0.1) == "hurts"
    assert run.verdict(-0.1, 0.3) == "no evidence either way"
    assert run.cosine_lr(0.05, 6, 12) == pytest.approx(0.025)
    assert run.cosine_lr(0.05, 12, 12) == pytest.approx(0.0, abs=1e-18)
