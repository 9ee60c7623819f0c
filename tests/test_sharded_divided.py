"""The analysis of an FSDP2-sharded model divided over 2 CPU processes (gloo).

Oracles: the motion group's sketches of row shards against those of the unsharded weights;
``gather_to`` against ``DTensor.full_tensor()`` (uneven row shards, a rank with an empty
shard, a placement other than ``Shard(0)``); the monitor runner's divided analysis against
``analyze`` of an unsharded copy with the same weights in one process (same records in the same
order, singular values and metrics equal); which rank decomposed which layer, counted inside
``analysis._decompose`` (each rank only its share, no layer twice, the shares balanced). The test
runs this file as a script in its own process group, which spawns the 2 ranks and is killed whole
on timeout.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from helpers import free_port, run_script_in_own_group

WORLD = 2


def build_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("wide", nn.Linear(24, 40))
    model.add_module("odd", nn.Linear(40, 7))  # 7 rows: shards of 4 and 3
    model.add_module("one", nn.Linear(7, 1))  # 1 row: rank 1's shard is empty
    model.add_module("conv", nn.Conv2d(3, 10, 3))
    model.add_module("lstm", nn.LSTM(6, 5, bidirectional=True))
    model.add_module("attn", nn.MultiheadAttention(8, 2))
    model.add_module("plain", nn.Linear(5, 5))  # left unsharded: a plain tensor
    for index in range(6):
        model.add_module(f"block{index}", nn.Linear(32, 32))
    return model


def worker(rank: int, out: str, port: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import svd_callback.analysis as analysis
    from svd_callback.callback import SpectralMonitor
    from svd_callback.sharding import gather_to

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    mesh = init_device_mesh("cpu", (WORLD,))
    checks = {}
    # gather_to against full_tensor
    for rows in (7, 1, 2):
        full = torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3)
        dt = distribute_tensor(full, mesh, [Shard(0)])
        expected = dt.full_tensor()  # a collective: every rank
        got = gather_to(dt, owner=1, rank=rank)
        checks[f"shard0_{rows}"] = (got is None) if rank == 0 else bool(torch.equal(got, expected))
    for name, placement in (("shard1", Shard(1)), ("replicate", Replicate())):
        dt = distribute_tensor(torch.randn(5, 4, generator=torch.Generator().manual_seed(1)),
                               mesh, [placement])
        expected = dt.full_tensor()
        got = gather_to(dt, owner=0, rank=rank)
        checks[name] = bool(torch.equal(got, expected)) if rank == 0 else got is None
    # the divided analysis through the monitor's runner
    model = build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, child in model.named_children():
        if name != "plain":
            fully_shard(child, mesh=mesh)
    decomposed: list[str] = []
    real = analysis._decompose

    def counting(members, fn, ctx):
        decomposed.extend(s.name for s in members)
        yield from real(members, fn, ctx)

    analysis._decompose = counting
    monitor = SpectralMonitor(conv_mode=("unfold", "slices"), metrics=("norms", "powerlaw"),
                              figures_every_n=0)
    result = monitor.runner.run(model, step=0, epochs_trained=0.0, trigger="test",
                                world=WORLD, rank=rank)
    analysis._decompose = real
    # the motion group: each rank sketches the rows it holds, the sketches are all-gathered
    from svd_callback.motion import MotionTracker

    real_sketch, row_sketched = analysis.sketch_row_block, []

    def counting_sketch(*args):
        got = real_sketch(*args)
        row_sketched.append(got is not None)
        return got

    analysis.sketch_row_block = counting_sketch
    moving = SpectralMonitor(conv_mode=("unfold",), metrics=("norms", "motion"),
                             figures_every_n=0, motion_sketch=16)
    moving.runner.run(model, step=0, epochs_trained=0.0, trigger="test", world=WORLD, rank=rank)
    deltas = {k: 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(i))
              for i, (k, v) in enumerate(state.items()) if v.dim() >= 2}
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key in deltas:
                local = param.to_local() if hasattr(param, "to_local") else param
                delta = deltas[key]
                if hasattr(param, "to_local"):
                    delta = distribute_tensor(delta, mesh, list(param.placements)).to_local()
                local.add_(delta)
    moved = moving.runner.run(model, step=1, epochs_trained=1.0, trigger="test", world=WORLD,
                              rank=rank)
    analysis.sketch_row_block = real_sketch
    checks["rows sketched where they live"] = sum(row_sketched) >= 2 * 12
    motion_rows = {r.name: {m: r.metrics[m] for m in ("weight_motion", "weight_rotation",
                                                      "weight_drift")}
                   for r in moved.report if not r.skipped}

    rows = [{"name": r.name, "mode": r.mode, "reason": r.reason, "shape": list(r.shape or ()),
             "metrics": r.metrics, "svals": r.svals.double().tolist() if r.svals is not None
             else None} for r in result.report]
    local_share = sorted(set(decomposed))
    shares = [None] * WORLD
    dist.all_gather_object(shares, local_share)
    if rank == 0:
        unsharded = build_model()
        unsharded.load_state_dict(state)
        oracle = analysis.analyze(unsharded, config=monitor.runner.config)
        expected = [{"name": r.name, "mode": r.mode, "reason": r.reason,
                     "shape": list(r.shape or ()), "metrics": r.metrics,
                     "svals": r.svals.double().tolist() if r.svals is not None else None}
                    for r in oracle]
        tracker = MotionTracker(k=16)
        plain = build_model()
        plain.load_state_dict(state)
        analysis.analyze(plain, metrics=("norms", "motion"), motion=tracker)
        plain.load_state_dict({k: v + deltas[k] if k in deltas else v for k, v in state.items()})
        after = analysis.analyze(plain, metrics=("norms", "motion"), motion=tracker)
        motion_expected = {r.name: {m: r.metrics[m] for m in ("weight_motion", "weight_rotation",
                                                              "weight_drift")}
                           for r in after if not r.skipped}
        Path(out, "result.json").write_text(json.dumps({
            "checks": checks, "rows": rows, "expected": expected, "shares": shares,
            "owners": result.owners,
            "sharded": type(model.wide.weight).__name__,
            "motion": motion_rows, "motion_expected": motion_expected,
        }))
    else:
        Path(out, "checks1.json").write_text(json.dumps(checks))
        Path(out, "motion1.json").write_text(json.dumps(motion_rows))
    dist.barrier()  # rank 0 computes the oracles alone: the ranks tear down together
    dist.destroy_process_group()


def main(out: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(str(out), free_port()), nprocs=WORLD, join=True)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fsdp2_analysis_is_divided_and_equals_the_unsharded_one(tmp_path):
    run_script_in_own_group(__file__, tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["sharded"] == "DTensor"
    assert all(result["checks"].values()), result["checks"]
    assert all(json.loads((tmp_path / "checks1.json").read_text()).values())
    rows, expected = result["rows"], result["expected"]
    assert [(r["name"], r["mode"]) for r in rows] == [(r["name"], r["mode"]) for r in expected]
    assert {"lstm.weight_hh_l0_reverse.f", "attn.k", "one", "plain"} <= {r["name"] for r in rows}
    for got, want in zip(rows, expected, strict=True):
        assert got["reason"] == want["reason"] and got["shape"] == want["shape"], got["name"]
        if want["svals"] is None:
            continue
        assert got["svals"] == pytest.approx(want["svals"], rel=1e-5, abs=1e-6), got["name"]
        assert got["metrics"].keys() == want["metrics"].keys()
        for key, value in want["metrics"].items():
            if math.isnan(value):
                assert math.isnan(got["metrics"][key]), (got["name"], key)
            else:
                assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (
                    got["name"], key)
    # motion: rows sketched where they live equal the sketches of the unsharded weights, and
    # both ranks hold every layer's values
    motion, expected_motion = result["motion"], result["motion_expected"]
    assert set(motion) == set(expected_motion) and {"one", "odd", "attn.k", "plain"} <= set(motion)
    assert json.loads((tmp_path / "motion1.json").read_text()) == motion
    for name, values in expected_motion.items():
        for key, value in values.items():
            assert value > 0, (name, key)
            assert motion[name][key] == pytest.approx(value, rel=1e-5), (name, key)
    # each rank decomposed its own share only: no layer twice, every analysed layer once
    share0, share1 = (set(s) for s in result["shares"])
    analysed = {r["name"] for r in expected if r["reason"] is None}
    assert share0 and share1 and not share0 & share1 and share0 | share1 == analysed
    owners = result["owners"]
    assert share0 == {n for n in analysed if owners[n] == 0}
    # the gates of one parameter stay together on one rank
    assert len({owners[f"lstm.weight_ih_l0.{g}"] for g in "ifgo"}) == 1
    assert len({owners[f"attn.{p}"] for p in "qkv"}) == 1


if __name__ == "__main__":
    main(Path(sys.argv[1]))
