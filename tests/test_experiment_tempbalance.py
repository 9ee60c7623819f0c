"""Smoke test of experiments/tempbalance: two seeds of one epoch each, and the report."""

from __future__ import annotations

import argparse

from experiments.tempbalance import run


def test_runs_and_report(tmp_path):
    args = argparse.Namespace(epochs=1, lr=0.05, width=8, hidden=64, batch_size=256)
    rows = [run.run_one(arm, seed, args) for seed in (0, 1) for arm in ("baseline",
                                                                         "tempbalance")]
    assert all(0.0 <= r["final_acc"] <= r["best_acc"] <= 1.0 for r in rows)
    assert rows[0]["factors"] is None
    assert sorted(rows[1]["factors"]) == ["features.2", "features.5", "hidden"]
    text = run.report(rows, args, wall=1.0, fit_s=0.001)
    assert "Decision rule (protocol): helps here: **" in text
    assert "| baseline |" in text and "| tempbalance |" in text
