"""Class structure through training: class-specific features and class overlap vs accuracy.

A SmallCNN is trained on a Fashion-MNIST subset. At the initial weights and after every epoch, on
a fixed 256-image class-stratified probe drawn from the validation set, with the functions of
``svd_callback.classes``:

- class-specific features (Badola et al.; docs/methods.md#class-statistics) of the penultimate
  representation, the post-ReLU input of the classifier (D = ``hidden``), and of the globally
  average-pooled post-ReLU maps of the last conv (Badola et al.'s own choice of features,
  D = 2 * ``width``): mean |S_c| / D, the selectivity and the epoch-to-epoch Jaccard of S_c;
- the class-overlap hypergraph (docs/methods.md) of the last hidden layers (the last conv and the
  hidden linear layer; the 10-neuron classifier for reference): nodes = all SVD-neurons of the
  layer, hyperedge of class c = the neurons carrying the share ``tau`` of the class's mean
  |signal|; mean pairwise Jaccard of the hyperedges (class overlap), class-specific fraction and
  edge stability.

The questions: is mean |S_c| / D well below 0.5 (0.5 is what features of equal weight give), and
does class overlap fall as accuracy rises?

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 .venv/bin/python \
        -m experiments.class_structure.run --config configs/experiments/class_structure.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from scipy import stats

from experiments.arguments import experiment_parser, parse_with_config
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
from svd_callback.classes import (
    capture_activations,
    class_hyperedges,
    class_mean_signals,
    class_specific_features,
    find_penultimate_layer,
    hypergraph_stats,
    jaccard,
    neuron_signals,
)
from svd_callback.examples import SmallCNN

HERE = Path(__file__).resolve().parent

NUM_CLASSES = 10
FEATURE_LAYERS = {"penultimate": ("classifier", 0), "gap": ("features", 1)}
"""Name in the tables -> (module, 0 = its input / 1 = its output) holding the features: the
classifier's input, and the post-ReLU conv maps (pooled over space by
``class_specific_features``)."""
HYPERGRAPH_LAYERS = ("features.5", "hidden", "classifier")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(__doc__.splitlines()[0], HERE, train_size=5000, val_size=2000,
                               epochs=8)
    parser.add_argument("--probe-size", type=int, default=256)
    parser.add_argument("--mass", type=float, default=0.5, help="mass k of S_c")
    parser.add_argument("--tau", type=float, default=0.5, help="signal share of a hyperedge")
    parser.add_argument("--edge-m", type=int, default=8,
                        help="size of the fixed-size hyperedges (the second overlap measure)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    return parse_with_config(parser, argv)[0]


class ClassStructureProbe(Callback):
    """Class-specific features and hypergraph statistics on a fixed probe, at the initial weights
    (``on_train_start``) and after every training epoch. The model is put in eval mode for the
    probe pass and its mode restored; nothing draws from the global RNG."""

    def __init__(self, probe, mass: float, tau: float, edge_m: int) -> None:
        super().__init__()
        self.probe, self.mass, self.tau, self.edge_m = probe, mass, tau, edge_m
        self.rows: list[dict[str, Any]] = []
        self._previous_sets: dict[str, Any] = {}
        self._previous_edges: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = []
        self._measure(pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure(pl_module, trainer.current_epoch + 1)

    @torch.no_grad()
    def _measure(self, model: torch.nn.Module, epoch: int) -> None:
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            modules = dict(model.named_modules())
            names = sorted({m for m, _ in FEATURE_LAYERS.values()} | set(HYPERGRAPH_LAYERS))
            captured = capture_activations(model, self.probe.inputs, names, keep="both")
            logits = model(self.probe.inputs.to(next(model.parameters()).device))
        finally:
            model.train(was_training)
        labels = self.probe.labels
        row: dict[str, Any] = {
            "epoch": epoch,
            "probe_acc": float((logits.argmax(1).cpu() == labels).float().mean()),
        }
        for key, (layer, which) in FEATURE_LAYERS.items():
            result = class_specific_features(
                captured[layer][which], labels, NUM_CLASSES, mass=self.mass,
                previous=self._previous_sets.get(key),
            )
            self._previous_sets[key] = result
            scalars = result.scalars()
            row[f"{key}_D"] = result.n_features
            row[f"{key}_fraction_mean"] = scalars["feature_fraction_mean"]
            row[f"{key}_fraction_max"] = float(torch.nan_to_num(result.size_fraction,
                                                                nan=-1.0).max())
            row[f"{key}_selectivity"] = scalars["selectivity"]
            row[f"{key}_set_jaccard_previous"] = scalars["feature_jaccard_previous_mean"]
            row[f"{key}_set_jaccard_between"] = mean_pairwise_jaccard(result.sets)
            row[f"{key}_notes"] = "; ".join(result.notes)
        for layer in HYPERGRAPH_LAYERS:
            module = modules[layer]
            conv = module if isinstance(module, torch.nn.Conv2d) else None
            signals = neuron_signals(module.weight, captured[layer][0], conv)
            means = class_mean_signals(signals, labels, NUM_CLASSES)
            edges = class_hyperedges(means, tau=self.tau)
            graph = hypergraph_stats(edges, signals.values.shape[1],
                                     self._previous_edges.get(layer))
            self._previous_edges[layer] = edges
            row[f"{layer}_neurons"] = int(signals.values.shape[1])
            for stat in ("jaccard_mean", "jaccard_max", "class_specific_fraction",
                         "edge_stability_mean"):
                row[f"{layer}_{stat}"] = graph.scalars[stat]
            row[f"{layer}_edge_size_mean"] = (
                sum(len(e) for e in edges.values()) / len(edges) if edges else math.nan)
            fixed = class_hyperedges(means, m=self.edge_m)
            row[f"{layer}_jaccard_mean_m"] = mean_pairwise_jaccard(fixed)
            # the same with sigma divided out: s_i / sigma_i = <v_i, mean patch>, so that the
            # neurons of largest sigma do not dominate every class's signal
            unit = class_mean_signals(signals.values / signals.sigma, labels, NUM_CLASSES)
            row[f"{layer}_jaccard_mean_unit"] = mean_pairwise_jaccard(
                class_hyperedges(unit, tau=self.tau))
            if signals.reason:
                row[f"{layer}_reason"] = signals.reason
        row["seconds"] = time.perf_counter() - started
        self.rows.append(row)


def mean_pairwise_jaccard(sets: dict[int, frozenset[int]]) -> float:
    """Mean Jaccard over pairs of classes (how much the classes' sets overlap)."""
    keys = sorted(sets)
    values = [jaccard(sets[a], sets[b]) for i, a in enumerate(keys) for b in keys[i + 1:]]
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def train_seed(args: argparse.Namespace, seed: int) -> tuple[list[dict], float, float]:
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = make_datamodule(args.dataset, args.root, args.batch_size, args.train_size,
                                 args.val_size, seed)
    probe = stratified_probe(datamodule, args.probe_size, seed=0)
    model = SmallCNN(width=args.width, hidden=args.hidden, image_size=image_size_of(args.dataset),
                     lr=args.lr)
    penultimate, reason = find_penultimate_layer(model)
    assert penultimate == FEATURE_LAYERS["penultimate"][0], (penultimate, reason)
    monitor = ClassStructureProbe(probe, args.mass, args.tau, args.edge_m)
    recorder = EpochRecorder()
    trainer = trainer_for(args.epochs, [recorder, monitor])
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    elapsed = time.perf_counter() - started
    probe_seconds = sum(row["seconds"] for row in monitor.rows)
    for row, epoch_row in zip(monitor.rows, recorder.rows, strict=True):
        row["val_acc"], row["val_loss"] = epoch_row["val_acc"], epoch_row["val_loss"]
    return monitor.rows, elapsed, probe_seconds


def spearman(x: list[float], y: list[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value over the finite pairs (NaN if fewer than 3)."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan, math.nan
    result = stats.spearmanr(*zip(*pairs, strict=True))
    return float(result.statistic), float(result.pvalue)


OVERLAPS = {"tau": "jaccard_mean", "m": "jaccard_mean_m", "unit": "jaccard_mean_unit"}
"""Overlap measure -> row key suffix: hyperedges holding the share tau of the class signal, the
edge_m neurons of largest class signal, or the share tau of the class signal with each neuron's
sigma divided out."""


def feature_lines(rows: list[dict], seed: int) -> list[str]:
    lines = []
    for key in FEATURE_LAYERS:
        values = [r[f"{key}_fraction_mean"] for r in rows if r["epoch"] > 0]
        below = all(v < 0.25 for v in values)
        lines.append(
            f"- seed {seed}, {key} features (D = {rows[0][f'{key}_D']}): mean |S_c|/D after "
            f"training {fmt(min(values))}-{fmt(max(values))} (init "
            f"{fmt(rows[0][f'{key}_fraction_mean'])}); well below 0.5 (< 0.25 at every trained "
            f"epoch): **{'yes' if below else 'no'}**; mean Jaccard of S_c between classes "
            f"{fmt(rows[0][f'{key}_set_jaccard_between'])} at init -> "
            f"{fmt(rows[-1][f'{key}_set_jaccard_between'])} at the end"
        )
    return lines


def overlap_lines(all_rows: dict[int, list[dict]], args: argparse.Namespace) -> list[str]:
    """Per layer and overlap measure: init -> end per seed, and Spearman(overlap, val acc)
    pooled over the seeds, with and without the initial weights."""
    lines = []
    for layer in HYPERGRAPH_LAYERS:
        n_neurons = all_rows[next(iter(all_rows))][0][f"{layer}_neurons"]
        for measure, suffix in OVERLAPS.items():
            if measure == "m" and n_neurons <= 2 * args.edge_m:
                continue  # edges of m neurons out of few say nothing about overlap
            key = f"{layer}_{suffix}"
            ends = "; ".join(f"seed {s} {fmt(rows[0][key])} -> {fmt(rows[-1][key])}"
                             for s, rows in all_rows.items())
            points = [(r[key], r["val_acc"], r["epoch"]) for rows in all_rows.values()
                      for r in rows]
            rho, p = spearman([o for o, _, _ in points], [a for _, a, _ in points])
            rho_t, p_t = spearman([o for o, _, e in points if e > 0],
                                  [a for _, a, e in points if e > 0])
            falls = rho < 0 and p < 0.05
            what = {"tau": f"tau = {args.tau}", "m": f"m = {args.edge_m}",
                    "unit": f"tau = {args.tau} on signal / sigma"}[measure]
            lines.append(
                f"- {layer} ({n_neurons} SVD-neurons), hyperedges with {what}: class overlap "
                f"init -> end: {ends}. "
                f"Spearman(overlap, val acc) pooled over seeds and epochs 0-{args.epochs}: "
                f"rho = {fmt(rho, 2)} (p = {fmt(p, 2)}); trained epochs only: rho = "
                f"{fmt(rho_t, 2)} (p = {fmt(p_t, 2)}). Overlap falls as accuracy rises "
                f"(rho < 0, p < 0.05, epochs 0-{args.epochs}): **{'yes' if falls else 'no'}**"
            )
    return lines


def epoch_table(rows: list[dict]) -> str:
    header = ["epoch", "val acc", "probe acc", "penult. mean abs(S_c)/D", "penult. max",
              "penult. selectivity", "penult. S_c stability", "penult. S_c between classes",
              "GAP mean abs(S_c)/D", "GAP selectivity", "GAP S_c between classes"]
    header += [f"{layer} overlap tau" for layer in HYPERGRAPH_LAYERS]
    header += [f"{layer} overlap m" for layer in HYPERGRAPH_LAYERS[:2]]
    header += [f"{layer} overlap signal/sigma" for layer in HYPERGRAPH_LAYERS[:2]]
    header += [f"{layer} edge size tau" for layer in HYPERGRAPH_LAYERS[:2]]
    header += [f"{layer} class-specific tau" for layer in HYPERGRAPH_LAYERS[:2]]
    out = []
    for r in rows:
        out.append([r["epoch"], r["val_acc"], r["probe_acc"], r["penultimate_fraction_mean"],
                    r["penultimate_fraction_max"], r["penultimate_selectivity"],
                    r["penultimate_set_jaccard_previous"], r["penultimate_set_jaccard_between"],
                    r["gap_fraction_mean"], r["gap_selectivity"], r["gap_set_jaccard_between"]]
                   + [r[f"{layer}_jaccard_mean"] for layer in HYPERGRAPH_LAYERS]
                   + [r[f"{layer}_jaccard_mean_m"] for layer in HYPERGRAPH_LAYERS[:2]]
                   + [r[f"{layer}_jaccard_mean_unit"] for layer in HYPERGRAPH_LAYERS[:2]]
                   + [r[f"{layer}_edge_size_mean"] for layer in HYPERGRAPH_LAYERS[:2]]
                   + [r[f"{layer}_class_specific_fraction"] for layer in HYPERGRAPH_LAYERS[:2]])
    return markdown_table(header, out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    verdicts: list[str] = []
    timing = []
    all_rows: dict[int, list[dict]] = {}
    for seed in args.seeds:
        rows, train_seconds, probe_seconds = train_seed(args, seed)
        all_rows[seed] = rows
        (out / f"class_structure_seed{seed}.json").write_text(json.dumps(rows, indent=1))
        timing.append(f"seed {seed}: fit {train_seconds:.0f} s of which class analyses "
                      f"{probe_seconds:.1f} s")
        verdicts += feature_lines(rows, seed)
        notes = sorted({r[f"{k}_notes"] for r in rows for k in FEATURE_LAYERS} - {""})
        sections += ["", f"### Seed {seed}: per epoch", "", epoch_table(rows)]
        if notes:
            sections += ["", "Notes from `class_specific_features`: " + " / ".join(notes)]
    elapsed = time.perf_counter() - started
    generated = "\n".join([
        f"Command: `{command_line()}`",
        "",
        f"Machine: {machine_line()}. Wall time {elapsed:.0f} s ({'; '.join(timing)}).",
        "",
        f"Model: SmallCNN(width={args.width}, hidden={args.hidden}) on {args.dataset} (train "
        f"{args.train_size}, validation {args.val_size}), Adam lr {args.lr}, {args.epochs} epochs. "
        f"Probe: {args.probe_size} validation images, class-stratified "
        f"(`ProbeSet.from_dataset`, seed 0), the same at every epoch. S_c with mass k = "
        f"{args.mass}; hyperedges over all SVD-neurons of the layer, either the smallest set "
        f"holding the share tau = {args.tau} of the class's mean |signal| (`tau`) or the "
        f"{args.edge_m} neurons of largest class signal (`m`), or the share tau of the class's "
        "mean |signal / sigma_i| (`signal/sigma`: sigma divided out). "
        "`penult.` = the classifier's input (post-ReLU hidden layer, D = hidden); `GAP` = the "
        "post-ReLU maps of the last conv averaged over space (D = 2 * width). Overlap = mean "
        "pairwise Jaccard of the 10 class hyperedges. Epoch 0 = "
        "the initial weights; val acc on the whole validation subset.",
        "",
        "### Verdicts (computed)",
        "",
        *verdicts,
        *overlap_lines(all_rows, args),
        *sections,
    ])
    path = write_results(args.results, "class_structure: class-specific features and class "
                         "overlap through training", generated)
    print(generated)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
