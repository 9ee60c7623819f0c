"""experiments/tempbalance: one-epoch runs of every arm and their tables, the rates of the
balanced and control arms, the run cache and the decision rule."""

from __future__ import annotations

import json
import os

import pytest

from experiments.derived import write_json
from experiments.tempbalance import run, tables
from svd_callback.examples.data import FASHION_MNIST_ROOT

TINY_RESNET = {"train_size": 256, "val_size": 256}


def test_digits_arms_and_their_tables(tmp_path):
    balanced = run.run_one("digits", "tempbalance", 0, epochs=1)
    m = run.mean_factor(balanced)
    factors = [f for e in balanced["factor_epochs"] for f in e["factors"].values()]
    assert len(factors) == 3 and m == pytest.approx(sum(factors) / 3)
    rows = [run.run_one("digits", "baseline", 0, epochs=1), balanced,
            run.run_one("digits", "global_m", 0, epochs=1, lr_factor=m),
            run.run_one("digits", "global_hi", 0, epochs=1, lr_factor=2 - m)]
    assert all(0.0 <= r["final_acc"] <= r["best_acc"] <= 1.0 for r in rows)
    assert rows[0]["factors"] is None and rows[2]["factor_epochs"] is None
    assert sorted(balanced["factors"]) == ["features.2", "features.5", "hidden"]
    for row, factor in zip(rows[2:], (m, 2 - m), strict=True):
        # the control trains every parameter at lr x factor x cosine, nothing balanced
        epoch = row["checks"]["epochs"][0]
        assert epoch["scheduled"] == pytest.approx(0.05 * factor)
        assert epoch["max_rel_error_untuned"] < 1e-12 and epoch["tuned_min"] == epoch["tuned_max"]
    write_json(tmp_path / "runs.json", [{k: r.get(k) for k in run.DERIVED_KEYS} for r in rows])
    blocks = tables.build(tmp_path)
    text = blocks["digits"]
    for arm in run.ARMS:
        assert f"| {arm} |" in text
    assert "| tempbalance - global_m |" in text and "**Against the control:**" in text
    assert "Trained by: `" in blocks["provenance"]


def test_decision_rule_and_cosine():
    assert tables.decision([0.1, 0.2, 0.01]) == "higher"
    assert tables.decision([-0.1, -0.2]) == "lower"
    assert tables.decision([0.1, -0.2, 0.3]) == "no evidence either way"
    assert tables.decision([0.0, 0.1]) == "no evidence either way"
    assert run.cosine_lr(0.05, 6, 12) == pytest.approx(0.025)
    assert run.cosine_lr(0.05, 12, 12) == pytest.approx(0.0, abs=1e-18)


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
