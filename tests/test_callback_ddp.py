"""SpectralMonitor under DDP (2 CPU processes, gloo): each rank analyses its share of the layers,
rank 0 logs, the values equal a single-process ``analyze`` of the same weights, every rank gets
the aggregates in ``callback_metrics``, and a stop wanted by one rank stops both.

The test runs this file as a script (``strategy="ddp"`` relaunches the script for rank 1), as a
user's training script would run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BATCHES = 3
MODES = ("unfold", "operator")


def main(out: Path) -> None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    import svd_callback.monitor.runner as callback_module
    from svd_callback.alerts import CallableRule, default_rules
    from svd_callback.callback import SpectralMonitor
    from svd_callback.examples import DigitsDataModule, SmallCNN

    shares: list[list[str] | None] = []
    real_analyze = callback_module.analyze

    def recording_analyze(*args, **kwargs):
        shares.append(kwargs.get("layer_names"))
        return real_analyze(*args, **kwargs)

    callback_module.analyze = recording_analyze

    def rank_one_wants_to_stop(history, epoch, step):
        """Fires on rank 1 only, after the second epoch: the stop must still be agreed."""
        if torch.distributed.get_rank() == 1 and epoch == 2:
            return "rank 1 asks to stop"
        return None

    rules = [*default_rules(), CallableRule(rank_one_wants_to_stop, action="stop")]
    pl.seed_everything(0, verbose=False)
    model = SmallCNN()
    monitor = SpectralMonitor(conv_mode=MODES, alert_rules=rules, figures_every_n=0)
    trainer = pl.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_epochs=4,
        limit_train_batches=BATCHES, limit_val_batches=1, num_sanity_val_steps=0,
        callbacks=[monitor], logger=TensorBoardLogger(out, name="tb", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    trainer.save_checkpoint(out / "final.ckpt")
    rank = trainer.global_rank
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith(("spectral", "all_layers", "alerts"))}
    (out / f"rank{rank}.json").write_text(json.dumps({
        "shares": shares, "callback_metrics": metrics, "epoch": trainer.current_epoch,
        "history": monitor.summaries,
        "motion_layers": sorted(monitor.state_dict()["runner"]["motion"]["layers"]),
    }))


def test_ddp_split_gather_and_agreed_stop(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=150, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # the agreed stop: both ranks ended after the 2nd epoch (max_epochs=4)
    assert [r["epoch"] for r in ranks] == [2, 2]
    # both ranks hold the same aggregates for EarlyStopping / ModelCheckpoint, and the same
    # alert count: the alerts are gathered, rank 1's stop counts on rank 0 too
    assert ranks[0]["callback_metrics"]["alerts/count"] == 1
    assert ranks[0]["callback_metrics"] == ranks[1]["callback_metrics"]
    assert "all_layers/alpha_mean" in ranks[0]["callback_metrics"]
    assert [e["step"] for e in ranks[0]["history"]] == [0, BATCHES, 2 * BATCHES]
    for first, second in zip(ranks[0]["history"], ranks[1]["history"], strict=True):
        assert first["summary"] == second["summary"]

    # each rank analysed its own, disjoint share, every time
    names = {"features.0", "features.2", "features.5", "hidden", "classifier"}
    # every rank keeps every layer's motion sketches (so rank 0's checkpoint holds them all)
    assert ranks[0]["motion_layers"] == ranks[1]["motion_layers"] == sorted(names)
    for first, second in zip(ranks[0]["shares"], ranks[1]["shares"], strict=True):
        assert first and second and not set(first) & set(second)
        assert set(first) | set(second) == names

    import torch
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    from svd_callback.analysis import analyze
    from svd_callback.examples import SmallCNN
    from svd_callback.sinks.history import read_history

    history = read_history(tmp_path / "tb" / "version_0" / "spectral_history.jsonl")
    layers = [r for r in history if r["type"] == "layer"]
    assert {r["rank"] for r in layers} == {0, 1}
    # the stop raised on rank 1 alone is recorded by rank 0, naming the rule and the rank
    stops = [r for r in history if r["type"] == "alert" and r["severity"] == "stop"]
    assert [(r["rule"], r["ranks"], r["step"]) for r in stops] == [
        ("rank_one_wants_to_stop", [1], 2 * BATCHES)]
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"tensors": 0})
    acc.Reload()
    text = [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors("alerts")]
    # the alerts text is written at every analysis; only the last one has the alert
    assert len(text) == 3 and all(t.startswith("**Healthy**") for t in text[:2])
    assert "rank 1 asks to stop" in text[-1] and "(rank 1)" in text[-1]

    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    initial = SmallCNN()
    final = SmallCNN.load_from_checkpoint(tmp_path / "final.ckpt")
    for step, model in ((0, initial), (2 * BATCHES, final)):
        expected = analyze(model, conv_mode=MODES, example_input=model.example_input_array)
        logged = {(r["layer"], r["mode"]): r for r in layers if r["step"] == step}
        assert len(logged) == len(expected) == len(names) * len(MODES)
        for record in expected:
            row = logged[(record.name, record.mode)]
            assert row["n_svals"] == record.svals.numel()
            if step:  # the drift from the initial weights, against the dense weights
                w0, w1 = (m.get_submodule(record.name).weight.detach().double()
                          for m in (initial, model))
                x = (w1 - w0).flatten(1)
                drift = float(x.norm() / w0.norm())
                # exact up to k = 64 columns; beyond, 4 sd of the sketch's error for the
                # change's stable rank r: 4 sqrt(2 / (k r)) / 2
                r = float(x.norm() ** 2 / torch.linalg.matrix_norm(x, ord=2) ** 2)
                rel = 1e-6 if x.shape[1] <= 64 else 2 * math.sqrt(2 / (64 * r))
                assert row["metrics"]["weight_drift"] == pytest.approx(drift, rel=rel), \
                    record.name
            for metric, value in record.metrics.items():
                got = row["metrics"][metric]
                if not math.isfinite(value):
                    assert got is None, (record.name, metric)
                else:
                    assert got == pytest.approx(value, rel=1e-5, abs=1e-7), (record.name, metric)
    assert torch.isfinite(final.hidden.weight).all()
    # rank 0 alone wrote the TensorBoard files
    assert len(list((tmp_path / "tb" / "version_0").glob("events.out.tfevents.*"))) == 1


if __name__ == "__main__":
    main(Path(sys.argv[1]))
