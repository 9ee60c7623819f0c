"""SpectralMonitor under ``strategy="ddp_spawn"`` (2 CPU processes, gloo) with every mode, every
metric group and the class analysis: ``fit`` returns.

Lightning sends rank 0's ``trainer.callback_metrics`` back to the launching process through a
multiprocessing queue that the parent reads only after ``join``; a payload larger than the pipe
buffer blocks the worker's ``put`` for ever. The callback keeps ``callback_metrics`` to the
model-level values, so the payload stays small whatever the model.

A rule that holds on rank 1 only (rank-local state) must read the same ``alerts/active`` on
both ranks: the conditions in force are gathered, or ``EarlyStopping``/``ModelCheckpoint`` on
the level would decide differently per rank.

The test runs this file as a script in its own process group, killed whole on timeout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import run_script_in_own_group

from svd_callback.alerts import Hysteresis, Rule, default_class_rules, default_rules

MODES = ("unfold", "operator", "slices")
GROUPS = ("norms", "powerlaw", "mp", "traps")
LEVEL_TAGS = ("alerts/active", "alerts/raised", "alerts/healthy_step")


class RankOneHolds(Rule):
    """Holds on rank 1 alone, from the analysis of epoch 1 on."""

    def __init__(self) -> None:
        super().__init__()
        self._hysteresis = Hysteresis(1)

    def check(self, history, epoch, step):
        holds = torch.distributed.get_rank() == 1 and epoch >= 1
        return [self.make_alert(epoch=epoch, step=step)] if self._hysteresis.update(
            (), holds) else []


class RecordLevels(pl.Callback):
    """Each rank writes its ``alerts/`` level values at every training epoch end."""

    def __init__(self, out: Path) -> None:
        self.out, self.rows = out, []

    def on_train_epoch_end(self, trainer, pl_module):
        monitor = next(c for c in trainer.callbacks if type(c).__name__ == "SpectralMonitor")
        in_force = sorted(c.rule for c in monitor.last_result.active)
        self.rows.append([float(trainer.callback_metrics[t]) for t in LEVEL_TAGS] + [in_force])
        (self.out / f"levels{trainer.global_rank}.json").write_text(json.dumps(self.rows))


def main(out: Path) -> None:
    import lightning.pytorch as pl

    from svd_callback.callback import SpectralMonitor
    from svd_callback.examples import DigitsDataModule, SmallCNN

    pl.seed_everything(0, verbose=False)
    rules = [*default_rules(), *default_class_rules(), RankOneHolds()]
    monitor = SpectralMonitor(conv_mode=MODES, metrics=GROUPS, class_analysis=True,
                              figures_every_n=0, alert_rules=rules)
    trainer = pl.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=2,
        limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
        callbacks=[monitor, RecordLevels(out)], logger=False, default_root_dir=out,
        enable_checkpointing=False,
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
    assert "all_layers/alpha_mean" in metrics and "alerts/count" in metrics
    assert not [k for k in metrics if k.startswith(("spectral/", "classes/"))]
    rows = [json.loads(line) for line in (tmp_path / "spectral_history.jsonl").open()]
    layers = [r for r in rows if r["type"] == "layer"]
    assert {r["mode"] for r in layers} == set(MODES) and {r["rank"] for r in layers} == {0, 1}
    assert any(r["type"] == "class" for r in rows)
    # rank 1's condition is in force on both ranks (raised at epoch 1, held at epoch 2), and
    # the level values are the same on both
    levels = [json.loads((tmp_path / f"levels{r}.json").read_text()) for r in (0, 1)]
    assert levels[0] == levels[1] and len(levels[0]) == 2
    for active, _, healthy_step, in_force in levels[0]:
        assert "RankOneHolds" in in_force and active == len(in_force) and healthy_step == -1


if __name__ == "__main__":
    main(Path(sys.argv[1]))
