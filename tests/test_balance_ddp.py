"""``SpectralLRBalancer`` under ``strategy="ddp_spawn"`` (2 CPU processes, gloo): both ranks
split the same groups, use the same factors and the same rate at every step, so the replicated
weights stay identical (different rates on two ranks would make them drift apart).

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
from lightning.pytorch.callbacks import Callback

from svd_callback.balance import SpectralLRBalancer
from svd_callback.examples import DigitsDataModule, SmallCNN


class SGDCNN(SmallCNN):
    def configure_optimizers(self):  # noqa: D102
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
        return [optimizer], [scheduler]


class Recorder(Callback):
    """Each rank's group rates at every step, its factors and its final weights."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # noqa: D102
        self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])

    def on_train_end(self, trainer, pl_module):  # noqa: D102
        rank = trainer.global_rank
        balancer = next(c for c in trainer.callbacks if isinstance(c, SpectralLRBalancer))
        (self.out / f"rank{rank}.json").write_text(json.dumps(
            {"factors": balancer.factors, "lrs": self.lrs,
             "groups": len(trainer.optimizers[0].param_groups)}))
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                   self.out / f"rank{rank}.pt")


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=3,
        limit_train_batches=3, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[SpectralLRBalancer(), Recorder(out)], logger=False, default_root_dir=out,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(SGDCNN(width=16, hidden=64), DigitsDataModule(batch_size=32))


@pytest.mark.timeout(240)
def test_ddp_ranks_use_the_same_rates(tmp_path):
    run_script_in_own_group(__file__, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["groups"] == ranks[1]["groups"] == 1 + 3  # one group per tuned layer
    assert ranks[0]["factors"] == ranks[1]["factors"]
    assert sorted(ranks[0]["factors"]) == ["features.2", "features.5", "hidden"]
    assert len(set(ranks[0]["factors"].values())) == 3
    assert len(ranks[0]["lrs"]) == 9 and ranks[0]["lrs"] == ranks[1]["lrs"]
    assert any(len(set(step)) > 2 for step in ranks[0]["lrs"])  # balanced rates were in use
    weights = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
