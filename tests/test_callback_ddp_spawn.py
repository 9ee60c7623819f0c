"""SpectralMonitor under ``strategy="ddp_spawn"`` (2 CPU processes, gloo) with every mode, every
metric group and the class analysis: ``fit`` returns.

Lightning sends rank 0's ``trainer.callback_metrics`` back to the launching process through a
multiprocessing queue that the parent reads only after ``join``; a payload larger than the pipe
buffer blocks the worker's ``put`` for ever. The callback keeps ``callback_metrics`` to the
model-level values, so the payload stays small whatever the model.

The test runs this file as a script in its own process group, killed whole on timeout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import run_script_in_own_group

MODES = ("unfold", "operator", "slices")
GROUPS = ("norms", "powerlaw", "mp", "traps")


def main(out: Path) -> None:
    import lightning.pytorch as pl

    from svd_callback.callback import SpectralMonitor
    from svd_callback.examples import DigitsDataModule, SmallCNN

    pl.seed_everything(0, verbose=False)
    monitor = SpectralMonitor(conv_mode=MODES, metrics=GROUPS, class_analysis=True,
                              figures_every_n=0)
    trainer = pl.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=2,
        limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
        callbacks=[monitor], logger=False, default_root_dir=out, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(SmallCNN(), DigitsDataModule(batch_size=32))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    (out / "parent.json").write_text(json.dumps({"callback_metrics": metrics}))


@pytest.mark.timeout(240)
def test_ddp_spawn_full_config_returns(tmp_path):
    run_script_in_own_group(__file__, tmp_path)
    metrics = json.loads((tmp_path / "parent.json").read_text())["callback_metrics"]
    # the model-level values reach the launching process; the per-layer ones stay out
    assert "spectral_summary/alpha_mean" in metrics and "alerts/count" in metrics
    assert not [k for k in metrics if k.startswith(("spectral/", "classes/"))]
    rows = [json.loads(line) for line in (tmp_path / "spectral_history.jsonl").open()]
    layers = [r for r in rows if r["type"] == "layer"]
    assert {r["mode"] for r in layers} == set(MODES) and {r["rank"] for r in layers} == {0, 1}
    assert any(r["type"] == "class" for r in rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
