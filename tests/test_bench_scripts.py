"""The device and memory benchmarks run end to end at their ``--smoke`` sizes on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_memory_smoke():
    out = _run("experiments/benchmarks/bench_memory.py", "--smoke")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"linear", "embedding"}
    # weight MiB of Linear(512, 512) and Embedding(2000, 64) in float32, by construction
    assert float(rows["linear"][3]) == 1.0 and float(rows["embedding"][3]) == 0.5
    assert all(float(row[4]) >= 0 for row in rows.values())


def test_bench_gpu_smoke_on_cpu():
    out = _run("-m", "experiments.benchmarks.bench_gpu", "--smoke", "--device", "cpu")
    assert "svd_method auto -> gram" in out.splitlines()[0]
    rows = {line.split("(")[0].strip(): line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"resnet", "vit"}
    # ResNet: conv1, 4 BasicBlocks of 2 convs, 3 downsample convs, fc = 13 records; ViT:
    # conv_proj, q, k, v, out_proj, 2 MLP linears, head, and the modules holding class_token and
    # pos_embedding, reported with a reason = 10
    assert int(rows["resnet"][-1]) == 13 and int(rows["vit"][-1]) == 10
    assert all(float(value) > 0 for row in rows.values() for value in row[2:6])
