"""Old against new: ``bench_callback.py`` of two checkouts, run alternately in one session.

Each round runs the old checkout's ``experiments/benchmarks/bench_callback.py`` and then the
new one's, each in a subprocess with ``PYTHONPATH`` set to its checkout (so that each imports
its own ``svd_callback``), and reads their printed times; alternating the two spreads any drift
of the machine's load over both. Reported: per configuration and quantity the median over the
rounds of old and new, and the ratio new / old of the medians (1.00: no change).

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python \\
        -m experiments.benchmarks.bench_interleaved --old <checkout> --new . --rounds 3 --resnet

Measured once (2 shared CPU threads, 3 rounds), the callback before its split into parts
(b37ad76) against after: new/old of the median analysis time 1.12 and 0.94 on the digits CNN
(unfold; unfold+operator; 8-17 ms, printed to 1 ms), 0.94 / 1.00 / 1.03 on ResNet-18
(unfold / slices / operator; 0.32-0.64 s); every ratio inside the spread of all six runs.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

LINE = re.compile(
    r"^(?P<name>\S.*?)\s+step\s+(?P<step>[\d.]+) s\s+epoch\s+(?P<epoch>[\d.]+) s.*?"
    r"analysis\s+(?P<analysis>[\d.]+) s \(analyze\(\) alone\s+(?P<analyze>[\d.]+) s, figures\s+"
    r"(?P<figures>[\d.]+|nan) s\)"
)
QUANTITIES = ("step", "epoch", "analysis", "analyze", "figures")


def parse(output: str) -> dict[str, dict[str, float]]:
    """Configuration name -> quantity -> seconds, from bench_callback's printed report."""
    out: dict[str, dict[str, float]] = {}
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            out[match["name"]] = {q: float(match[q]) for q in QUANTITIES}
    return out


def bench(checkout: Path, extra: list[str]) -> dict[str, dict[str, float]]:
    """One run of the checkout's bench_callback.py with its own package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    script = checkout / "experiments" / "benchmarks" / "bench_callback.py"
    done = subprocess.run([sys.executable, str(script), *extra], cwd=checkout, env=env,
                          capture_output=True, text=True, check=True)
    return parse(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resnet", action="store_true", help="also time ResNet-18 (minutes)")
    args = parser.parse_args(argv)
    extra = [] if args.resnet else ["--skip-resnet"]
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"old": [], "new": []}
    for i in range(args.rounds):
        for which in ("old", "new"):
            runs[which].append(bench(getattr(args, which).resolve(), extra))
            print(f"round {i + 1} {which}: done", flush=True)
    print(f"threads OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, rounds {args.rounds}, "
          f"old {args.old}, new {args.new}; medians over the rounds, seconds")
    for name in runs["old"][0]:
        for quantity in QUANTITIES:
            old = statistics.median(r[name][quantity] for r in runs["old"])
            new = statistics.median(r[name][quantity] for r in runs["new"])
            spread = [r[name][quantity] for r in runs["old"] + runs["new"]]
            print(f"{name:30s} {quantity:9s} old {old:8.4f}  new {new:8.4f}  new/old "
                  f"{new / old if old else float('nan'):5.2f}  (all runs "
                  f"{min(spread):.4f}-{max(spread):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
