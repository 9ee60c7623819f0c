"""SpectralMonitor under Lightning's ``ModelParallelStrategy`` with FSDP2 (``fully_shard``), 2 CPU
processes with gloo: ``fit`` returns, every layer is analysed from its full (gathered) weight,
and the class analysis runs on every rank, each on its slice of the probe.

Oracles: after ``fit`` every rank gathers each weight with ``DTensor.full_tensor()`` and rank 0
writes ``torch.linalg.svdvals`` of it (float64); the last analysis ran after the last optimiser
step, so its spectral and Frobenius norms must match. The class statistics of the sharded model
(every rank its slice of the probe, ``ProbeSplit``) must equal those of an unsharded copy with the
gathered weights, analysed in one process on the whole probe, for the monitor's probe and for a
probe of one image (rank 1 then runs on padding alone). The test runs this file as a script in its
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
    class_statistics(model, monitor, trainer, out, ShardedMLP)


def class_statistics(model, monitor, trainer, out: Path, unsharded_copy) -> None:
    """The class statistics of the sharded model (every rank) and of an unsharded copy (rank 0,
    one process), written by rank 0 to ``classes.json``."""
    from svd_callback.classes.analysis import analyze_classes
    from svd_callback.classes.config import ClassAnalysisConfig
    from svd_callback.classes.probe import ProbeSet
    from svd_callback.classes.sharded import ProbeSplit

    probe = monitor.classes.probe  # broadcast from rank 0 by the analyses
    assert probe is not None and len(probe) > 1
    state = {k: v.full_tensor().detach().clone() for k, v in model.net.state_dict().items()}
    config = ClassAnalysisConfig(batch_size=16)
    one = ProbeSet(probe.inputs[:1], probe.labels[:1], probe.indices[:1])
    split = ProbeSplit(trainer.global_rank, trainer.world_size)
    sharded = [analyze_classes(model, p, config, split=split) for p in (probe, one)]
    if trainer.is_global_zero:
        plain = unsharded_copy()
        plain.net.load_state_dict(state)
        unsharded = [analyze_classes(plain, p, config) for p in (probe, one)]
        (out / "classes.json").write_text(json.dumps({
            "sharded": [r.record_metrics() for r in sharded],
            "sharded_reasons": [r.reasons for r in sharded],
            "unsharded": [r.record_metrics() for r in unsharded],
            "unsharded_reasons": [r.reasons for r in unsharded],
            "local_shape": list(model.net[0].weight.to_local().shape),
        }))


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
    classes = [r for r in rows if r["type"] == "class"]
    assert {r["step"] for r in classes} == {r["step"] for r in layers}  # every analysis
    statistics = json.loads((tmp_path / "classes.json").read_text())
    assert statistics["local_shape"] == [24, 64]
    assert statistics["sharded_reasons"] == statistics["unsharded_reasons"]
    for got, expected in zip(statistics["sharded"], statistics["unsharded"], strict=True):
        assert set(expected) == {"net.0", "net.2"} and got.keys() == expected.keys()
        for layer, stats in expected.items():
            assert got[layer].keys() == stats.keys()
            for key, value in stats.items():
                if value != value:  # NaN
                    assert got[layer][key] != got[layer][key], (layer, key)
                else:
                    assert got[layer][key] == pytest.approx(value, rel=1e-5, abs=1e-6)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
