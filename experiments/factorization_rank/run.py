"""CP factorization rank of hidden activations for well and poorly trained versions of one net.

Saini & Papalexakis (2018; docs/methods.md#class-statistics) link the rank of a non-negative CP
factorization of a hidden layer's activations on test inputs to how well the network was trained,
direction unconfirmed. Here one SmallCNN is taken in four states, all from the same seeded init:

- ``init``: the initial weights (0 epochs);
- ``1 epoch``: after one epoch of Adam on a Fashion-MNIST subset;
- ``N epochs``: after ``epochs`` epochs (the well-trained version);
- ``random labels``: after ``epochs`` epochs on the same images with 100% random labels
  (memorised, not learned).

For each state and each watched layer (post-ReLU maps of the 2nd and 3rd conv), the activations
on a class-stratified validation probe go through
:func:`svd_callback.classes.factorization_rank` (non-negative CP by HALS for F = 1..max_rank,
CORCONDIA, the largest F with CORCONDIA >= threshold and an acceptable fit), repeated for
several seeds (each seed draws its own probe images and its own CP starts).

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 .venv/bin/python \
        -m experiments.factorization_rank.run --config configs/experiments/factorization_rank.yaml

``--model resnet`` factorises the block outputs of the cached BatchNorm ResNet-8 runs on
Fashion-MNIST, per training seed (``experiments/factorization_rank/resnet.py``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.factorization_rank.run")

import argparse
import copy
import json
import math
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from experiments.arguments import (
    add_resnet_arguments,
    experiment_parser,
    parse_with_config,
    require_data,
)
from experiments.common import (
    EpochRecorder,
    command_line,
    fmt,
    image_size_of,
    machine_line,
    make_datamodule,
    markdown_table,
    stratified_probe,
    trainer_for,
    write_results,
)
from svd_callback.classes import capture_activations, factorization_rank
from svd_callback.examples import SmallCNN

HERE = Path(__file__).resolve().parent

LAYERS = {"conv2 (features.3)": "features.3", "conv3 (features.6)": "features.6"}
"""Table name -> ReLU module whose output is the post-ReLU map of a hidden conv."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(__doc__.splitlines()[0], HERE, train_size=4000, val_size=2000,
                               epochs=6)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--probe-size", type=int, default=256)
    parser.add_argument("--rank-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one probe draw and one set of CP starts per seed")
    parser.add_argument("--max-rank", type=int, default=6)
    parser.add_argument("--threshold", type=float, default=80.0, help="CORCONDIA threshold")
    parser.add_argument("--other-thresholds", type=float, nargs="*", default=[50.0],
                        help="also report the rank these thresholds choose on the same curves")
    parser.add_argument("--n-starts", type=int, default=3)
    parser.add_argument("--max-images", type=int, default=64)
    add_resnet_arguments(parser, "at init, the middle and the last epoch")
    return require_data(parse_with_config(parser, argv)[0])


class Snapshots(Callback):
    """Copies of the model's state dict after the listed numbers of training epochs."""

    def __init__(self, epochs: set[int]) -> None:
        super().__init__()
        self.epochs = epochs
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if 0 in self.epochs:
            self.states[0] = copy.deepcopy(pl_module.state_dict())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if done in self.epochs:
            self.states[done] = copy.deepcopy(pl_module.state_dict())


def train(args: argparse.Namespace, label_noise: float, keep: set[int]):
    pl.seed_everything(args.seed, workers=True, verbose=False)
    datamodule = make_datamodule(args.dataset, args.root, args.batch_size, args.train_size,
                                 args.val_size, args.seed, label_noise=label_noise)
    model = SmallCNN(width=args.width, hidden=args.hidden, image_size=image_size_of(args.dataset),
                     lr=args.lr)
    snapshots, recorder = Snapshots(keep), EpochRecorder()
    trainer_for(args.epochs, [snapshots, recorder]).fit(model, datamodule=datamodule)
    return model, datamodule, snapshots.states, recorder.rows


@torch.no_grad()
def ranks_for(model: torch.nn.Module, datamodule, args: argparse.Namespace,
              layers: Mapping[str, str] = LAYERS) -> dict:
    """layer -> list over rank seeds of (rank, fits, corcondia, reason, seconds); ``layers``
    maps a table name to the module whose (post-ReLU) output is factorised."""
    out: dict[str, list[dict]] = {name: [] for name in layers}
    model.eval()
    for seed in args.rank_seeds:
        probe = stratified_probe(datamodule, args.probe_size, seed=seed)
        captured = capture_activations(model, probe.inputs, list(layers.values()), keep="output")
        for name, layer in layers.items():
            started = time.perf_counter()
            result = factorization_rank(
                captured[layer][1], max_rank=args.max_rank, threshold=args.threshold,
                n_starts=args.n_starts, seed=seed, max_images=args.max_images,
            )
            out[name].append({
                "seed": seed,
                "rank": result.rank,
                "fits": [float(v) for v in result.fits],
                "corcondia": [float(v) for v in result.corcondia],
                "shape": list(result.shape),
                "reason": result.reason,
                "notes": list(result.notes),
                "seconds": time.perf_counter() - started,
            })
            entry = out[name][-1]
            again = chosen_rank(entry["fits"], entry["corcondia"], args.threshold)
            if again != result.rank:
                raise RuntimeError(f"choice rule mismatch: {again} vs {result.rank}")
            for other in args.other_thresholds:
                entry[f"rank@{other:g}"] = chosen_rank(entry["fits"], entry["corcondia"], other)
    return out


def chosen_rank(fits: list[float], curve: list[float], threshold: float,
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


def rank_text(entries: list[dict], max_rank: int, key: str = "rank") -> str:
    ranks = [e[key] for e in entries]
    shown = ", ".join("none" if r is None else (f"{r}" + ("*" if r == max_rank else ""))
                      for r in ranks)
    finite = [r for r in ranks if r is not None]
    median = statistics.median(finite) if finite else math.nan
    return f"{shown} (median {fmt(float(median))})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model == "resnet":
        from experiments.factorization_rank import resnet

        return resnet.main(args)
    started = time.perf_counter()
    model, datamodule, states, rows = train(args, 0.0, {0, 1, args.epochs})
    noisy_model, _, noisy_states, noisy_rows = train(args, 1.0, {args.epochs})
    train_seconds = time.perf_counter() - started
    variants = {
        "init": (states[0], rows[0]),
        "1 epoch": (states[1], rows[1]),
        f"{args.epochs} epochs": (states[args.epochs], rows[args.epochs]),
        "random labels": (noisy_states[args.epochs], noisy_rows[args.epochs]),
    }
    results = {}
    t0 = time.perf_counter()
    for variant, (state, _) in variants.items():
        model.load_state_dict(state)
        results[variant] = ranks_for(model, datamodule, args)
        print(variant, {k: [e["rank"] for e in v] for k, v in results[variant].items()},
              flush=True)
    rank_seconds = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "factorization_rank.json").write_text(json.dumps(results, indent=1))

    keys = ["rank", *(f"rank@{t:g}" for t in args.other_thresholds)]
    summary = [[variant, f"{row['val_acc']:.3f}", f"{row['val_loss']:.3f}",
                *[rank_text(results[variant][name], args.max_rank, key)
                  for key in keys for name in LAYERS]]
               for variant, (_, row) in variants.items()]
    summary_header = ["state", "val acc", "val loss"] + [
        f"{name}, CORCONDIA >= {t:g}" for t in [args.threshold, *args.other_thresholds]
        for name in LAYERS]
    curves = []
    for variant in variants:
        for name in LAYERS:
            for entry in results[variant][name]:
                curves.append([variant, name, entry["seed"], entry["rank"],
                               " ".join(f"{v:.0f}" for v in entry["corcondia"]),
                               " ".join(f"{v:.3f}" for v in entry["fits"]),
                               "x".join(map(str, entry["shape"])), entry["reason"] or ""])
    well = f"{args.epochs} epochs"
    direction = []
    for key, threshold in zip(keys, [args.threshold, *args.other_thresholds], strict=True):
        for name in LAYERS:
            medians = {v: _median_rank(results[v][name], key) for v in variants}
            direction.append(
                f"- {name}, CORCONDIA >= {threshold:g}: median chosen rank "
                + ", ".join(f"{v} {fmt(float(medians[v]))}" for v in variants)
                + f". Well trained ({well}) vs 1 epoch: "
                f"{_compare(medians[well], medians['1 epoch'])}; vs init: "
                f"{_compare(medians[well], medians['init'])}; vs random labels: "
                f"{_compare(medians[well], medians['random labels'])}."
            )
    fit_rows = []
    for name in LAYERS:
        means = {v: _mean_fits(results[v][name]) for v in variants}
        fit_rows += [[name, v, *means[v]] for v in variants]
        order = sorted(variants, key=lambda v: means[v][0])
        direction.append(
            f"- {name}, CP fit at F = 1 (mean over rank seeds; lower = the activations need more "
            f"components): " + ", ".join(f"{v} {means[v][0]:.3f}" for v in variants)
            + f"; order from most to least components needed: {' < '.join(order)}."
        )
    notes = sorted({n for v in results.values() for es in v.values() for e in es
                    for n in e["notes"]})
    generated = "\n".join([
        f"Command: `{command_line()}`",
        "",
        f"Machine: {machine_line()}. Wall time {time.perf_counter() - started:.0f} s (training "
        f"{train_seconds:.0f} s, factorization ranks {rank_seconds:.0f} s).",
        "",
        f"Model: SmallCNN(width={args.width}, hidden={args.hidden}) on {args.dataset} (train "
        f"{args.train_size}, validation {args.val_size}), Adam lr {args.lr}, seed {args.seed}. "
        f"`factorization_rank(max_rank={args.max_rank}, threshold={args.threshold}, "
        f"n_starts={args.n_starts}, max_images={args.max_images})` on a {args.probe_size}-image "
        f"stratified validation probe per rank seed ({', '.join(map(str, args.rank_seeds))}). "
        "A rank marked * sits at max_rank (censored: the true choice may be higher).",
        "",
        "### Direction observed (computed)",
        "",
        *direction,
        "",
        "### Chosen rank per state (one value per rank seed)",
        "",
        markdown_table(summary_header, summary),
        "",
        "### Mean CP fit 1 - ||X - Xhat|| / ||X|| per number of components F",
        "",
        markdown_table(["layer", "state", *(f"F={f}" for f in range(1, args.max_rank + 1))],
                       fit_rows),
        "",
        "### CORCONDIA and fit curves (F = 1..max_rank)",
        "",
        markdown_table(["state", "layer", "seed", "rank", "CORCONDIA", "fit", "tensor",
                        "reason"], curves),
        "",
        "Notes from `factorization_rank`: " + ("; ".join(notes) if notes else "none"),
    ])
    path = write_results(args.results, "factorization_rank: CP rank of hidden activations, well "
                         "vs poorly trained", generated)
    print(generated)
    print(f"\nwrote {path}")
    del noisy_model
    return 0


def _mean_fits(entries: list[dict]) -> list[float]:
    """Mean fit per F over the rank seeds."""
    curves = [e["fits"] for e in entries if e["fits"]]
    return [statistics.fmean(c[f] for c in curves) for f in range(len(curves[0]))]


def _median_rank(entries: list[dict], key: str) -> float:
    ranks = [e[key] for e in entries if e[key] is not None]
    return float(statistics.median(ranks)) if ranks else math.nan


def _compare(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b):
        return "undetermined"
    return "higher" if a > b else "lower" if a < b else "equal"


if __name__ == "__main__":
    raise SystemExit(main())
