"""Import time of the package: ``import svd_callback`` in a fresh process, against ``import torch``
alone (which it needs), for one or more source trees (e.g. two checkouts to compare).

Each round runs every statement once in a new interpreter, interleaved, so a slow spell of a
shared machine hits all alike; reported: the median and the best wall time of the whole process
over ``--rounds`` rounds, and the time above ``import torch``.

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        .venv/bin/python -m experiments.benchmarks.bench_import --source . --source /tmp/other
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(statement: str, source: Path | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, env=env,
                   cwd=source or Path.cwd())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, action="append",
                        help="a source tree holding svd_callback/ (repeatable; default: .)")
    parser.add_argument("--statement", default="import svd_callback")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    sources = [s.resolve() for s in (args.source or [Path(".")])]
    cases = {"import torch": ("import torch", None)}
    cases.update({f"{args.statement} ({s})": (args.statement, s) for s in sources})
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (statement, source) in cases.items():
            times[name].append(timed(statement, source))
    base = statistics.median(times["import torch"])
    print(f"{'case':70s} {'median s':>9s} {'best s':>7s} {'above torch':>12s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:70s} {median:9.3f} {min(values):7.3f} {median - base:12.3f}")


if __name__ == "__main__":
    main()
