"""Peak memory of one analysis of a single large layer, as a multiple of the weight's size.

Cases: ``Linear(8192, 8192)`` and ``Embedding(50000, 768)`` (analysed with ``embeddings=True``),
each analysed by ``analyze`` with the monitor's defaults (unfold, ``svd_method="auto"``, every
metric group of the default selection) under ``torch.no_grad()``.

CPU: each case runs in a fresh subprocess; ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the
process's peak resident set, KiB on Linux) is read after the imports, the layer's creation and a
warm-up analysis of a tiny layer (baseline), and after the analysis; the peak added by the
analysis is the difference. tracemalloc does not see torch's allocations, hence the RSS.
CUDA (``--device cuda``): the model's weight is on the GPU, the peak is
``torch.cuda.max_memory_allocated`` minus the memory allocated before.

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        .venv/bin/python experiments/benchmarks/bench_memory.py [--device cuda] [--smoke]

``--smoke`` uses Linear(512, 512) and Embedding(2000, 64) (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import warnings

CASES = {"linear": (8192, 8192), "embedding": (50000, 768)}
SMOKE = {"linear": (512, 512), "embedding": (2000, 64)}


def measure(case: str, shape: tuple[int, int], device: str) -> dict[str, float]:
    """Run one case in this process; returns the weight size and the added peak, in MiB."""
    import torch

    from svd_callback.analysis import analyze
    from svd_callback.config import AnalysisConfig

    torch.manual_seed(0)
    if case == "linear":
        model = torch.nn.Sequential(torch.nn.Linear(shape[1], shape[0], bias=False))
    else:
        model = torch.nn.Sequential(torch.nn.Embedding(*shape))
    model = model.to(device)
    weight_mib = model[0].weight.numel() * model[0].weight.element_size() / 2**20
    config = AnalysisConfig(embeddings=case == "embedding")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():  # warm-up on a tiny layer: lazy imports and solver set-up
            analyze(torch.nn.Sequential(torch.nn.Linear(64, 64)).to(device), config=config)
        if device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with torch.no_grad():
            report = analyze(model, config=config)
        if device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert len(report) == 1 and report[0].reason is None, [r.reason for r in report]
    return {"weight_mib": weight_mib, "peak_mib": peak / 2**20,
            "multiple": peak / 2**20 / weight_mib, "svd_method": config.svd_method}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a test runs it)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # the child process's one case
    args = parser.parse_args()
    cases = SMOKE if args.smoke else CASES
    if args.case:
        print(json.dumps(measure(args.case, cases[args.case], args.device)))
        return
    print(f"{'case':<10} {'shape':>14} {'weight MiB':>11} {'peak MiB':>9} {'x weight':>9}  "
          f"device={args.device} solver")
    for case, shape in cases.items():
        command = [sys.executable, __file__, "--case", case, "--device", args.device]
        if args.smoke:
            command.append("--smoke")
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{case:<10} {str(shape):>14} {row['weight_mib']:>11.1f} {row['peak_mib']:>9.1f} "
              f"{row['multiple']:>9.2f}  {row['svd_method']}")


if __name__ == "__main__":
    main()
