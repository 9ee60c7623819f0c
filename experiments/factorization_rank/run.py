"""CP structure of hidden activations for well and poorly trained ResNet-8 runs, beside
sparsity-matched permutation controls. The protocol is in RESULTS.md.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.factorization_rank.run

reads (or trains) the cached runs of ``experiments.resnet_checkpoints`` (healthy
``sgd_cosine_wd``, ``labels_100``, ``lr_tiny``; seeds 0-2), factorises the post-ReLU outputs of
the blocks ``stage2.0`` and ``stage3.0`` on three probes per state, writes every fit and
CORCONDIA curve to ``experiments/factorization_rank/derived/`` and rebuilds the tables of
RESULTS.md from it (``experiments.factorization_rank.tables``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.factorization_rank.run")

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.arguments import seeded_parser
from experiments.data_check import require_fashion_mnist
from experiments.derived import write_json, write_rows
from experiments.resnet_checkpoints import RESNET, run_kind, trained_run
from svd_callback.classes import ProbeSet, capture_activations, factorization_rank
from svd_callback.classes.factorization import bound_tensor

HERE = Path(__file__).resolve().parent
DERIVED = HERE / "derived"
STATES = (("init", "sgd_cosine_wd", 0), ("epoch 6", "sgd_cosine_wd", 6),
          ("epoch 12", "sgd_cosine_wd", 12), ("random labels", "labels_100", 12),
          ("tiny lr", "lr_tiny", 12))
"""(state, recipe, epoch) of every factorised network."""
LAYERS = {"block2 (stage2.0)": "stage2.0", "block3 (stage3.0)": "stage3.0"}
VARIANTS = ("activations", "permuted", "channel-permuted")
SEEDS = (0, 1, 2)
RANK_SEEDS = (0, 1, 2)
PROBE_SIZE = 256
MAX_RANK = 6
THRESHOLD = 80.0
LOW_THRESHOLD = 50.0
N_STARTS = 3
COLUMNS = ["seed", "state", "layer", "rank_seed", "variant", "zero_raw", "zero_bounded", "rank",
           "rank_at_50", *(f"fit{f}" for f in range(1, MAX_RANK + 1)),
           *(f"corcondia{f}" for f in range(1, MAX_RANK + 1)), "seconds"]


def chosen_rank(fits: Sequence[float], curve: Sequence[float], threshold: float,
                fit_tolerance: float = 0.01) -> int | None:
    """The choice rule of ``factorization_rank`` applied to its curves at another threshold:
    the largest F with CORCONDIA(F) >= threshold whose fit is not more than ``fit_tolerance``
    below the best fit of a smaller F."""
    chosen, best_smaller = None, -math.inf
    for rank, (fit, cc) in enumerate(zip(fits, curve, strict=True), start=1):
        acceptable = math.isfinite(fit) and fit >= best_smaller - fit_tolerance
        if acceptable and math.isfinite(cc) and cc >= threshold:
            chosen = rank
        if math.isfinite(fit):
            best_smaller = max(best_smaller, fit)
    return chosen


def permuted(x: torch.Tensor, seed: int, per_channel: bool) -> torch.Tensor:
    """``x`` (I, C, P) with its entries permuted at random (a private generator seeded
    ``seed``): all of them, or each channel's I x P entries among themselves."""
    generator = torch.Generator().manual_seed(int(seed))
    if not per_channel:
        flat = x.reshape(-1)
        return flat[torch.randperm(flat.numel(), generator=generator)].reshape(x.shape)
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        block = x[:, c].reshape(-1)
        out[:, c] = block[torch.randperm(block.numel(), generator=generator)].reshape(
            x[:, c].shape)
    return out


def factorise_state(model: torch.nn.Module, test_set, key: dict[str, Any]) -> list[dict]:
    """Rows of every layer, rank seed and variant of one network."""
    rows = []
    for rank_seed in RANK_SEEDS:
        probe = ProbeSet.from_dataset(test_set, size=PROBE_SIZE, seed=rank_seed)
        captured = capture_activations(model, probe.inputs, list(LAYERS.values()), keep="output")
        for name, module in LAYERS.items():
            raw = captured[module][1]
            bounded, _ = bound_tensor(raw)
            tensors = {"activations": bounded,
                       "permuted": permuted(bounded, rank_seed, per_channel=False),
                       "channel-permuted": permuted(bounded, rank_seed, per_channel=True)}
            for variant, tensor in tensors.items():
                started = time.perf_counter()
                result = factorization_rank(tensor, max_rank=MAX_RANK, threshold=THRESHOLD,
                                            n_starts=N_STARTS, seed=rank_seed)
                fits = [float(v) for v in result.fits]
                curve = [float(v) for v in result.corcondia]
                if chosen_rank(fits, curve, THRESHOLD) != result.rank:
                    raise RuntimeError("the choice rule differs from factorization_rank's")
                rows.append({
                    **key, "layer": name, "rank_seed": rank_seed, "variant": variant,
                    "zero_raw": float((raw == 0).double().mean()),
                    "zero_bounded": float((bounded == 0).double().mean()),
                    "rank": result.rank, "rank_at_50": chosen_rank(fits, curve, LOW_THRESHOLD),
                    **{f"fit{f + 1}": v for f, v in enumerate(fits)},
                    **{f"corcondia{f + 1}": v for f, v in enumerate(curve)},
                    "seconds": time.perf_counter() - started,
                })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = seeded_parser(__doc__.splitlines()[0], HERE, SEEDS, DERIVED).parse_args(argv)
    require_fashion_mnist(args.root)
    torch.set_num_threads(1)
    started = time.perf_counter()
    datamodule = RESNET.datamodule(RESNET.kind("sgd_cosine_wd"), 0, root=args.root)
    datamodule.setup("fit")
    rows, runs = [], {}
    for seed in args.seeds:
        for state, kind, epoch in STATES:
            run = trained_run(seed, kind=kind, root=args.root)
            runs[(kind, seed)] = {"kind": kind, "seed": seed, "recipe": run_kind(kind).what,
                                  "train_seconds": run.seconds, "machine": run.machine,
                                  "test_acc": {str(e["epoch"]): e["val_acc"]
                                               for e in run.epochs}}
            t0 = time.perf_counter()
            rows += factorise_state(run.model(epoch), datamodule.val_set,
                                    {"seed": seed, "state": state})
            print(f"seed {seed} {state}: {time.perf_counter() - t0:.0f} s", flush=True)
    derived = Path(args.derived)
    write_rows(derived / "factorizations.csv", rows, COLUMNS)
    write_json(derived / "meta.json", {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python -m experiments.factorization_rank.run",
        "runs": list(runs.values()), "wall_seconds": time.perf_counter() - started,
        "settings": {"probe_size": PROBE_SIZE, "max_rank": MAX_RANK, "threshold": THRESHOLD,
                     "n_starts": N_STARTS, "rank_seeds": list(RANK_SEEDS)},
    })
    from experiments.factorization_rank import tables

    tables.main(["--derived", str(derived), "--results", args.results])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
