"""Random = Marchenko-Pastur, trained = heavy-tailed? Every spectrum of the width-16 ResNet-8
runs (three conv modes) and of a wide MLP (512-eigenvalue layers), at init, after training and
shuffled, with the MP bulk fit and Clauset et al.'s likelihood-ratio tests of its tail, on the
whole spectrum and beyond the bulk. The protocol is in RESULTS.md.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.rmt_validation.run

reads (or trains) the cached runs (``experiments.resnet_checkpoints``,
``experiments.rmt_validation.wide``), writes one row per spectrum to
``experiments/rmt_validation/derived/spectra.csv`` and rebuilds the tables of RESULTS.md from
it (``experiments.rmt_validation.tables``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.rmt_validation.run")

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.arguments import seeded_parser
from experiments.data_check import require_fashion_mnist
from experiments.derived import write_json, write_rows
from experiments.resnet_checkpoints import trained_run
from experiments.rmt_validation.wide import trained_mlp
from svd_callback import analyze
from svd_callback.rmt.mp import fit_mp_bulk
from svd_callback.rmt.tail_tests import ALTERNATIVES, compare_tail

HERE = Path(__file__).resolve().parent
DERIVED = HERE / "derived"
SEEDS = (0, 1, 2)
RESNET_MODES = ("unfold", "operator", "slices")
TESTED_MODES = ("unfold", "slices")
"""Modes whose spectra get the likelihood-ratio tests (operator: thousands of eigenvalues of
per-frequency blocks, not part of the claims)."""
SHORT = {"exponential": "exp", "lognormal": "ln", "truncated_power_law": "tpl"}
COLUMNS = [
    "model", "seed", "state", "layer", "kind", "mode", "N", "M", "n_eigs", "alpha", "xmin", "D",
    "num_spikes", "mp_softrank", "n_tail", "alpha_full",
    *(f"{p}_{s}_full" for s in SHORT.values() for p in ("R", "p")), "verdict_full",
    "n_beyond", "alpha_beyond", *(f"{p}_{s}_beyond" for s in SHORT.values() for p in ("R", "p")),
    "verdict_beyond",
]


def shuffled_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy whose every conv/linear weight has its entries randomly permuted."""
    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in clone.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                w = module.weight
                perm = torch.randperm(w.numel(), generator=generator)
                w.copy_(w.reshape(-1)[perm].reshape(w.shape))
    return clone


def _tests(prefix: str, eigs: torch.Tensor, xmin: float | None) -> dict[str, Any]:
    tests = compare_tail(eigs, xmin)
    row: dict[str, Any] = {f"alpha{prefix}": tests.alpha, f"verdict{prefix}": tests.verdict()}
    for name, short in SHORT.items():
        c = tests.comparisons.get(name)
        row[f"R_{short}{prefix}"] = c.R if c else math.nan
        row[f"p_{short}{prefix}"] = c.p if c else math.nan
    return row | {("n_tail" if prefix == "_full" else "n_beyond"): tests.n_tail}


def spectrum_row(record, key: dict[str, Any], tested: bool) -> dict[str, Any]:
    """One spectrum: the analysis' metrics, the MP fit, the two likelihood-ratio verdicts."""
    eigs = record.eigenvalues
    n_rows, n_cols = record.matrix_shape
    m = record.metrics
    row = {**key, "layer": record.name, "kind": record.kind, "mode": record.mode, "N": n_rows,
           "M": n_cols, "n_eigs": 0 if eigs is None else int(eigs.numel()),
           "alpha": m.get("alpha", math.nan), "xmin": m.get("xmin", math.nan),
           "D": m.get("D", math.nan), "num_spikes": m.get("num_spikes", math.nan),
           "mp_softrank": m.get("mp_softrank", math.nan)}
    if not tested or eigs is None or eigs.numel() < 8:
        return row
    eigs = eigs.to(torch.float64).cpu()
    row |= _tests("_full", eigs, None)
    fit = fit_mp_bulk(eigs, n_rows / n_cols, n_cols)
    beyond = eigs[eigs > fit.lambda_plus + fit.tw_margin] if fit.reason is None else eigs[:0]
    if beyond.numel():
        row |= _tests("_beyond", beyond, float(beyond.min()))
    else:
        row |= {"n_beyond": 0, "verdict_beyond": "undecided"}
    return row


def analyse_model(model: torch.nn.Module, modes: Sequence[str], key: dict[str, Any],
                  input_size: int | None) -> list[dict[str, Any]]:
    report = analyze(model, modes, input_size=input_size, metrics=("norms", "powerlaw", "mp"),
                     fit="ks")
    return [spectrum_row(r, key, r.mode in TESTED_MODES) for r in report if not r.skipped]


def main(argv: Sequence[str] | None = None) -> int:
    args = seeded_parser(__doc__.splitlines()[0], HERE, SEEDS, DERIVED).parse_args(argv)
    require_fashion_mnist(args.root)
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows, runs = [], []
    for seed in args.seeds:
        resnet = trained_run(seed, root=args.root)
        mlp = trained_mlp(seed, root=args.root)
        for name, run, modes, size in (("resnet16", resnet, RESNET_MODES, 28),
                                       ("mlp", mlp, ("unfold",), None)):
            final = max(run.states)
            models = {"init": run.model(0), "trained": run.model(final),
                      "shuffled": shuffled_copy(run.model(final), seed + 1)}
            for state, model in models.items():
                rows += analyse_model(model, modes, {"model": name, "seed": seed,
                                                     "state": state}, size)
            runs.append({"model": name, "seed": seed, "test_acc": run.final_accuracy,
                         "train_seconds": run.seconds, "machine": run.machine})
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    derived = Path(args.derived)
    write_rows(derived / "spectra.csv", rows, COLUMNS)
    write_json(derived / "meta.json", {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python -m experiments.rmt_validation.run",
        "runs": runs, "wall_seconds": time.perf_counter() - started,
        "alternatives": list(ALTERNATIVES),
    })
    from experiments.rmt_validation import tables

    tables.main(["--derived", str(derived), "--results", args.results])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
