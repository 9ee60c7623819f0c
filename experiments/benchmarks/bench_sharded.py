"""Wall time of one analysis of an FSDP2-sharded model: 2 ranks against 1, on the CPU with gloo.

Model: ``--layers`` ``nn.Linear(--width, --width)`` (default 16 of 1024 x 1024), each
``fully_shard``-ed on a 1-D mesh of all ranks (rows split over the ranks). Each rank is a
process with 1 thread. Timed: the monitor runner's whole analysis on every rank
(``AnalysisRunner.run``: gathers, spectra and metrics of the default groups, report gather,
aggregates, alerts), the slowest rank's wall time and CPU time (``time.process_time``: the work
a rank did, whatever else the machine runs), best of ``--repeats`` after one warm-up, with a
barrier before each. Three cases:

- ``1 rank``: the whole model on one process (the cost of the analysis itself);
- ``2 ranks, divided``: the layers split over the ranks by cost, each weight gathered to its
  owner only (``sharding.gather_shares``), each rank decomposing its share;
- ``2 ranks, every rank every layer``: the path kept for weights on a mesh smaller than the
  world (each weight gathered to every rank, every rank decomposing every layer): the baseline
  the division replaces.

Run alone (the 2 ranks need the machine's 2 cores):

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        .venv/bin/python -m experiments.benchmarks.bench_sharded
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build(layers: int, width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))


def worker(rank: int, world: int, port: int, args: argparse.Namespace, divided: bool,
           out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import svd_callback.monitor.runner as runner_module
    from svd_callback.callback import SpectralMonitor

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    model = build(args.layers, args.width)
    for layer in model:
        fully_shard(layer, mesh=mesh)
    if not divided:  # the path for weights on a smaller mesh: every rank every layer
        runner_module.divisible = lambda tensors, world_size: False
    monitor = SpectralMonitor(figures_every_n=0, histograms=False)
    times, cpu = [], []
    for repeat in range(args.repeats + 1):
        dist.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = monitor.runner.run(model, step=repeat, epochs_trained=float(repeat),
                                    trigger="bench", world=world, rank=rank)
        elapsed = torch.tensor([time.perf_counter() - start, time.process_time() - start_cpu],
                               dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank
        if repeat:  # the first is a warm-up
            times.append(float(elapsed[0]))
            cpu.append(float(elapsed[1]))
    analysed = len(result.report.analysed())
    shares = [sum(1 for r in result.owners.values() if r == k) for k in range(world)]
    if rank == 0:
        Path(out).write_text(json.dumps({"best": min(times), "times": times, "cpu": min(cpu),
                                         "analysed": analysed, "shares": shares}))
    dist.destroy_process_group()


def measure(world: int, divided: bool, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "result.json")
        mp.spawn(worker, args=(world, free_port(), args, divided, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="4 layers of 128, 1 repeat")
    args = parser.parse_args()
    if args.smoke:
        args.layers, args.width, args.repeats = 4, 128, 1
    cases = {"1 rank": (1, True), "2 ranks, divided": (2, True),
             "2 ranks, every rank every layer": (2, False)}
    results = {name: measure(world, divided, args) for name, (world, divided) in cases.items()}
    one = results["1 rank"]["best"]
    print(f"{args.layers} x Linear({args.width}, {args.width}), FSDP2 rows sharded, gloo, "
          f"1 thread per rank, best of {args.repeats}")
    print(f"{'case':34s} {'wall s':>8s} {'/ 1 rank':>9s} {'CPU s':>8s} {'/ 1 rank':>9s}  "
          f"layers per rank")
    one_cpu = results["1 rank"]["cpu"]
    for name, result in results.items():
        assert result["analysed"] == args.layers, result
        print(f"{name:34s} {result['best']:8.3f} {result['best'] / one:9.2f} "
              f"{result['cpu']:8.3f} {result['cpu'] / one_cpu:9.2f}  {result['shares']}")


if __name__ == "__main__":
    main()
