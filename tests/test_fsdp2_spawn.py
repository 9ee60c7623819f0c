"""SpectralMonitor under Lightning's ``ModelParallelStrategy`` with FSDP2 (``fully_shard``), 2 CPU
processes with gloo: ``fit`` returns, every layer is analysed from its full (gathered) weight,
and the class analysis is skipped with a reason instead of a rank-0 forward that would hang.

Oracle: after ``fit`` every rank gathers each weight with ``DTensor.full_tensor()`` and rank 0
writes ``torch.linalg.svdvals`` of it (float64); the last analysis ran after the last optimiser
step, so its spectral and Frobenius norms must match. The test runs this file as a script in its
own process group, killed whole on timeout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import run_script_in_own_group


def main(out: Path) -> None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.strategies import ModelParallelStrategy

    from svd_callback.callback import SpectralMonitor
    from svd_callback.examples import DigitsDataModule

    class ShardedMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(),
                                           torch.nn.Linear(48, 10))

        def configure_model(self) -> None:
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.flatten(1))

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.nn.functional.cross_entropy(self(batch[0]), batch[1]),
                     sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    pl.seed_everything(0, verbose=False)
    model = ShardedMLP()
    monitor = SpectralMonitor(figures_every_n=0, class_analysis=True)
    trainer = pl.Trainer(
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        accelerator="cpu", devices=2, max_epochs=2, limit_train_batches=2, limit_val_batches=1,
        num_sanity_val_steps=0, callbacks=[monitor], logger=False, default_root_dir=out,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    oracle = {}
    for name in ("net.0", "net.2"):
        weight = model.get_submodule(name).weight
        local = list(weight.to_local().shape)
        full = weight.full_tensor().detach().double()  # collective: every rank
        svals = torch.linalg.svdvals(full)
        oracle[name] = {"local_shape": local, "shape": list(full.shape),
                        "spectral_norm": float(svals[0]), "frobenius_norm": float(full.norm())}
    if trainer.is_global_zero:
        (out / "oracle.json").write_text(json.dumps(oracle))


@pytest.mark.timeout(240)
def test_fsdp2_fit_analyses_full_weights(tmp_path):
    run_script_in_own_group(__file__, tmp_path)
    oracle = json.loads((tmp_path / "oracle.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "spectral_history.jsonl").open()]
    layers = [r for r in rows if r["type"] == "layer"]
    last = max(r["step"] for r in layers)
    final = {r["layer"]: r for r in layers if r["step"] == last and r["mode"] == "unfold"}
    assert set(final) == set(oracle)
    for name, expected in oracle.items():
        assert expected["local_shape"][0] < expected["shape"][0]  # the weight is sharded
        row = final[name]
        assert row["shape"] == expected["shape"] and row["reason"] is None
        for key in ("spectral_norm", "frobenius_norm"):
            assert row["metrics"][key] == pytest.approx(expected[key], rel=1e-6)
    assert not any(r["type"] == "class" for r in rows)  # skipped with a reason, no hang


if __name__ == "__main__":
    main(Path(sys.argv[1]))
