"""Power-law fit alone: ``fit_power_law(ww_compat=True)`` vs WeightWatcher 0.7.7's own.

For realistic ESDs (eigenvalues of W^T W pooled over the kh*kw slices of Gaussian and
heavy-tailed Student-t random "conv" weights, as WeightWatcher pools them) of N = 576, 1800,
4608 and 15000 eigenvalues, both fits run on the same eigenvalues; the results must agree to
the bit (alpha, D, xmin, sigma, num_pl_spikes) and the speed ratio is printed. Threads are
pinned (torch and, through threadpoolctl, numpy's BLAS); times are the best of several runs
measured in one process. Also shown: our default-convention fit and our own full O(N^2) scan.

Run under the shared lock::

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        .venv/bin/python -m experiments.benchmarks.bench_powerlaw
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.benchmarks.bench_powerlaw")

import argparse
import contextlib
import logging
import math
import sys
import warnings

import numpy as np
import torch

from experiments.benchmarks.timing import best_time
from svd_callback.rmt import fit_power_law

TARGET = (15000, 10.0)
"""At N = 15000 our compat fit must be at least 10x faster than WeightWatcher's (aim: 20x)."""

SHAPES = {576: (9, 128, 64), 1800: (9, 400, 200), 4608: (9, 1024, 512), 15000: (25, 1200, 600)}
"""N -> (slices, rows, columns): N = slices * columns eigenvalues."""


def esd(n_eigs: int, kind: str, seed: int = 0) -> np.ndarray:
    """Sorted eigenvalues of W^T W pooled over slices, WeightWatcher's conv normalisation."""
    slices, rows, cols = SHAPES[n_eigs]
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        w = torch.randn(slices, rows, cols, generator=g, dtype=torch.float64)
    else:
        torch.manual_seed(seed)
        w = torch.distributions.StudentT(torch.tensor(2.5, dtype=torch.float64)).sample(
            (slices, rows, cols))
    w = w / math.sqrt(rows) * math.sqrt(0.5)
    return np.sort((torch.linalg.svdvals(w) ** 2).flatten().numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SHAPES))
    parser.add_argument("--ww-repeats", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    limits = contextlib.nullcontext()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.threads)
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import weightwatcher as ww

        watcher = ww.WeightWatcher()

    def ww_fit(evals: np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return watcher.fit_powerlaw(evals, plot=False, savefig=False)

    print(f"threads={args.threads} torch={torch.__version__} numpy={np.__version__} "
          f"weightwatcher={ww.__version__}")
    header = (f"{'N':>6} {'ESD':>9} {'alpha':>9} {'D':>8} {'same':>5} {'WW s':>8} "
              f"{'ours s':>8} {'ratio':>7} {'default s':>9} {'full s':>8} {'prune x':>7}")
    print(header)
    ok = True
    target_ratios = []
    with limits:
        for n_eigs in args.sizes:
            for kind in ("gaussian", "student-t"):
                evals = esd(n_eigs, kind)
                t_ww, theirs = best_time(lambda e=evals: ww_fit(e), args.ww_repeats)
                ours_fn = lambda e=evals: fit_power_law(e, ww_compat=True)  # noqa: E731
                fit_power_law(evals, ww_compat=True)  # warm-up
                t_ours, ours = best_time(ours_fn, args.repeats)
                t_def, _ = best_time(lambda e=evals: fit_power_law(e), args.repeats)
                t_full, full = best_time(
                    lambda e=evals: fit_power_law(e, ww_compat=True, prune=False), 1)
                alpha, _, xmin, _, D, sigma, spikes, *_ = theirs
                same = (ours.alpha, ours.D, ours.xmin, ours.sigma, ours.n_tail) == (
                    alpha, D, xmin, sigma, spikes) and full == ours
                ok &= same
                if n_eigs == TARGET[0]:
                    target_ratios.append(t_ww / t_ours)
                print(f"{n_eigs:>6} {kind:>9} {ours.alpha:>9.4f} {ours.D:>8.5f} "
                      f"{str(same):>5} {t_ww:>8.4f} {t_ours:>8.4f} {t_ww / t_ours:>7.1f} "
                      f"{t_def:>9.4f} {t_full:>8.4f} {t_full / t_ours:>7.1f}", flush=True)
    print("all fits bit-identical to WeightWatcher 0.7.7" if ok else "MISMATCH")
    if target_ratios:
        met = min(target_ratios) >= TARGET[1]
        print(f"target >= {TARGET[1]:g}x at N = {TARGET[0]}: "
              f"{'met' if met else 'MISSED'} (min ratio {min(target_ratios):.1f}x)")
        ok &= met
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
