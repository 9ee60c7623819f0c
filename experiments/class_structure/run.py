"""Class structure through training: class-specific features and class overlap vs accuracy.

At the initial weights and after every epoch, on a fixed class-stratified probe of the
validation set, :func:`svd_callback.classes.analyze_classes` (the library's class analysis,
docs/methods.md#class-statistics) gives per watched layer:

- the class-overlap hypergraph: every SVD-neuron of the layer is a node; per image the
  DeepDataProfiler-influential neurons (``influential_neurons``, threshold 0.1); hyperedge e_c =
  the neurons influential in at least the fraction ``q`` of class c's probe images; class overlap
  = mean pairwise Jaccard of the e_c, class-specific fraction, and the edge stability against
  the previous epoch with neurons matched by their singular vectors (Hungarian assignment);
- at the penultimate layer (the classifier head's input), Badola et al.'s class-specific feature
  sets S_c (mass k), mean |S_c| / D, and their functional test through the head: accuracy with
  the head restricted to S_c vs all features vs random same-size sets.

Two sources of weights: ``--model smallcnn`` trains the SmallCNN of ``svd_callback.examples``
(Fashion-MNIST subset or ``--dataset digits``), ``--model resnet`` reads the cached BatchNorm
ResNet-8 runs on Fashion-MNIST (``experiments.resnet_checkpoints``, every epoch of each seed).

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 .venv/bin/python \
        -m experiments.class_structure.run --model resnet
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.class_structure.run")

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from scipy import stats

from experiments.arguments import experiment_parser, parse_with_config, require_data
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
from experiments.resnet_checkpoints import KIND, RESNET, SaveStates, trained_runs
from experiments.seed_stats import spread
from svd_callback.classes import ClassAnalysisConfig, ClassTracker, analyze_classes
from svd_callback.examples import SmallCNN

HERE = Path(__file__).resolve().parent

WATCHED = {
    "smallcnn": ("features.5", "hidden", "classifier"),
    "resnet": ("stage3.0.conv1", "stage3.0.conv2", "head"),
}
"""Layers whose class hypergraphs are tabulated: the last convs and the last linear layers."""
FEATURE_LAYER = {"smallcnn": "classifier", "resnet": "head"}
"""The head whose input holds the penultimate features (SmallCNN: the post-ReLU hidden layer,
D = hidden; ResNet: the globally average-pooled last block, D = 4 * width = 64)."""
BADOLA_FRACTION = 5 / 64
"""Badola et al.: about 5 of 64 features per class for ResNet-20 on CIFAR-10."""
BADOLA_ACCURACY = (0.886, 0.917)
"""Badola et al.: 88.6% test accuracy from the head restricted to S_c, 91.7% with all features
(ResNet-20, CIFAR-10)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(__doc__.splitlines()[0], HERE, train_size=5000, val_size=2000,
                               epochs=8)
    parser.add_argument("--model", choices=["smallcnn", "resnet"], default="smallcnn",
                        help="resnet: the cached ResNet-8 runs (data, epochs and recipe of the "
                        "alert zoo's fashion_resnet pair; --train-size etc. are ignored)")
    parser.add_argument("--probe-size", type=int, default=256)
    parser.add_argument("--mass", type=float, default=0.5, help="mass k of S_c")
    parser.add_argument("--q", type=float, default=0.5,
                        help="fraction of a class's probe images a neuron must be influential "
                        "in to join its hyperedge")
    parser.add_argument("--influence-threshold", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    return require_data(parse_with_config(parser, argv)[0])


def smallcnn_states(args: argparse.Namespace, seed: int):
    """(data module, state per epoch, EpochRecorder rows) of one SmallCNN training run."""
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = make_datamodule(args.dataset, args.root, args.batch_size, args.train_size,
                                 args.val_size, seed)
    model = SmallCNN(width=args.width, hidden=args.hidden, image_size=image_size_of(args.dataset),
                     lr=args.lr)
    saver, recorder = SaveStates(), EpochRecorder()
    trainer_for(args.epochs, [recorder, saver]).fit(model, datamodule=datamodule)
    return model, datamodule, saver.states, recorder.rows


def resnet_states(args: argparse.Namespace, seed: int):
    """The same for the cached ResNet run of ``seed``."""
    run = trained_runs([seed], root=args.root)[0]
    datamodule = RESNET.datamodule(RESNET.kind(KIND), seed, root=args.root)
    return run.model(0), datamodule, run.states, run.epochs


def analyse_run(model: torch.nn.Module, states: Mapping[int, Mapping[str, torch.Tensor]],
                probe, config: ClassAnalysisConfig, layers: Sequence[str],
                feature_layer: str) -> list[dict[str, Any]]:
    """One row per epoch (ascending) of the class statistics of ``layers`` and of the
    penultimate features, the tracker carrying edges and feature sets from epoch to epoch."""
    tracker = ClassTracker()
    rows = []
    for epoch in sorted(states):
        model.load_state_dict(states[epoch])
        report = analyze_classes(model, probe, config, tracker=tracker)
        row: dict[str, Any] = {"epoch": epoch, "seconds": report.seconds,
                               "reasons": dict(report.reasons)}
        for layer in layers:
            values = report.layers.get(layer, {})
            edges = report.edges.get(layer, {})
            row[layer] = {
                "n_nodes": report.n_nodes.get(layer, 0),
                "n_edges": values.get("n_edges", math.nan),
                "jaccard_mean": values.get("jaccard_mean", math.nan),
                "class_specific_fraction": values.get("class_specific_fraction", math.nan),
                "edge_stability_mean": values.get("edge_stability_mean", math.nan),
                "neuron_match_cosine": values.get("neuron_match_cosine", math.nan),
                "edge_size_mean": (sum(len(e) for e in edges.values()) / len(edges)
                                   if edges else math.nan),
            }
        features = report.layers.get(feature_layer, {})
        row["features"] = {key: features.get(key, math.nan) for key in (
            "feature_fraction_mean", "feature_count_mean", "selectivity",
            "feature_jaccard_previous_mean", "functional_acc_full", "functional_acc_specific",
            "functional_acc_random", "functional_gain")}
        row["n_features"] = report.n_features
        rows.append(row)
    return rows


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value over the finite pairs (NaN if fewer than 3)."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return math.nan, math.nan
    result = stats.spearmanr(*zip(*pairs, strict=True))
    return float(result.statistic), float(result.pvalue)


def claim_lines(runs: dict[int, list[dict]], layers: Sequence[str]) -> list[str]:
    """The claims of the papers, each with the number that tests it and its spread over seeds."""
    final = {s: rows[-1] for s, rows in runs.items()}
    first = {s: rows[0] for s, rows in runs.items()}
    feats = {s: r["features"] for s, r in final.items()}
    d = next(iter(final.values()))["n_features"]
    fraction = spread(f["feature_fraction_mean"] for f in feats.values())
    fraction0 = spread(r["features"]["feature_fraction_mean"] for r in first.values())
    count = spread(f["feature_count_mean"] for f in feats.values())
    full = spread(f["functional_acc_full"] for f in feats.values())
    specific = spread(f["functional_acc_specific"] for f in feats.values())
    random_ = spread(f["functional_acc_random"] for f in feats.values())
    gain = spread(f["functional_gain"] for f in feats.values())
    small = fraction.ci_high < 0.25 if fraction.n > 1 else fraction.mean < 0.25
    keeps = specific.mean >= full.mean - 0.05 and gain.ci_low > 0
    lines = [
        f"- **Badola et al.: few class-specific features (|S_c| / D far below 0.5; about 5 of 64 "
        f"= {BADOLA_FRACTION:.3f} for ResNet-20 on CIFAR-10).** Mean |S_c| / D after the last "
        f"epoch: {fraction.text()} (mean |S_c| {count.text()} of D = {d}); at init "
        f"{fraction0.text()}. Far below 0.5 (upper 95% bound < 0.25): "
        f"**{'reproduced' if small else 'not reproduced'}**.",
        f"- **Badola et al.: the head restricted to S_c keeps most of the accuracy (88.6% vs "
        f"91.7% full on CIFAR-10).** Probe accuracy after the last epoch with all features "
        f"{full.text()}, with S_c only {specific.text()}, with random same-size sets "
        f"{random_.text()}; gain of S_c over random {gain.text()}. Within 5 points of the full "
        f"head and above random (lower 95% bound of the gain > 0): "
        f"**{'reproduced' if keeps else 'not reproduced'}**.",
    ]
    for layer in layers:
        rhos, drops, specific_end, stable = [], [], [], []
        for rows in runs.values():
            overlap = [r[layer]["jaccard_mean"] for r in rows]
            acc = [r["val_acc"] for r in rows]
            rhos.append(spearman(overlap, acc)[0])
            drops.append(overlap[-1] - overlap[0])
            specific_end.append(rows[-1][layer]["class_specific_fraction"])
            stable.append(rows[-1][layer]["edge_stability_mean"])
        pooled = [(r[layer]["jaccard_mean"], r["val_acc"]) for rows in runs.values()
                  for r in rows]
        rho_pooled, p_pooled = spearman([o for o, _ in pooled], [a for _, a in pooled])
        rho, drop = spread(rhos), spread(drops)
        falls = rho.n > 1 and rho.ci_high < 0 and drop.ci_high < 0
        sample = next(iter(runs.values()))
        nodes = sample[-1][layer]["n_nodes"]
        sizes = spread(rows[-1][layer]["edge_size_mean"] for rows in runs.values())
        lines.append(
            f"- **Praggastis et al.: class overlap of the hypergraph falls as the network learns "
            f"to separate the classes** ({layer}, {nodes} SVD-neurons; mean hyperedge size after "
            f"the last epoch {sizes.text()}). Spearman(overlap, test accuracy) over the epochs "
            f"of each seed: {rho.text()}; pooled over seeds and epochs rho = "
            f"{fmt(rho_pooled, 2)} (p = {fmt(p_pooled, 2)}, points not independent). Overlap "
            f"change init -> last epoch: {drop.text()}. Class-specific fraction after the last "
            f"epoch {spread(specific_end).text()}; edge stability (last two epochs, neurons "
            f"matched) {spread(stable).text()}. Overlap falls (upper 95% bounds of rho and of "
            f"the change < 0): **{'reproduced' if falls else 'not reproduced'}**."
        )
    return lines


def epoch_table(rows: list[dict], layers: Sequence[str]) -> str:
    header = ["epoch", "test acc", "mean abs(S_c)/D", "selectivity", "S_c stability",
              "head acc full", "head acc S_c", "head acc random"]
    header += [f"{layer} overlap" for layer in layers]
    header += [f"{layer} edge size" for layer in layers]
    header += [f"{layer} class-specific" for layer in layers]
    header += [f"{layer} edge stability" for layer in layers]
    out = []
    for r in rows:
        f = r["features"]
        out.append([r["epoch"], r["val_acc"], f["feature_fraction_mean"], f["selectivity"],
                    f["feature_jaccard_previous_mean"], f["functional_acc_full"],
                    f["functional_acc_specific"], f["functional_acc_random"]]
                   + [r[layer]["jaccard_mean"] for layer in layers]
                   + [r[layer]["edge_size_mean"] for layer in layers]
                   + [r[layer]["class_specific_fraction"] for layer in layers]
                   + [r[layer]["edge_stability_mean"] for layer in layers])
    return markdown_table(header, out)


def protocol(args: argparse.Namespace, accuracies: dict[int, float]) -> str:
    if args.model == "resnet":
        kind = RESNET.kind(KIND)
        model = (f"{RESNET.what}; {RESNET.epochs} epochs of `{kind.name}` ({kind.what}), "
                 "seeded as the alert zoo's runs, weights of every epoch from the cache of "
                 "`experiments.resnet_checkpoints`")
    else:
        model = (f"SmallCNN(width={args.width}, hidden={args.hidden}) on {args.dataset} (train "
                 f"{args.train_size}, validation {args.val_size}), Adam lr {args.lr}, "
                 f"{args.epochs} epochs")
    acc = spread(accuracies.values())
    return (
        f"**Protocol.** {model}; training seeds {', '.join(map(str, args.seeds))}. Probe: "
        f"{args.probe_size} validation images, class-stratified (`ProbeSet.from_dataset`, seed "
        "0), the same at every epoch and seed. `analyze_classes` with `ClassAnalysisConfig("
        f"edge_rule='influential', influence_threshold={args.influence_threshold}, q={args.q}, "
        f"feature_mass={args.mass})` on the weights after each epoch k = 0 (init) .. last, one "
        "`ClassTracker` per seed (neurons matched by singular vectors between epochs). Overlap = "
        "mean pairwise Jaccard of the class hyperedges; the functional test runs on the probe. "
        "Spreads: mean ± sample std over seeds, range, 95% Student-t interval of the mean. "
        f"Final validation accuracy {acc.text(4)} ("
        + ", ".join(f"seed {s}: {a:.4f}" for s, a in accuracies.items()) + ")."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layers = WATCHED[args.model]
    feature_layer = FEATURE_LAYER[args.model]
    config = ClassAnalysisConfig(probe_size=args.probe_size, q=args.q,
                                 influence_threshold=args.influence_threshold,
                                 feature_mass=args.mass, layers=layers,
                                 feature_layer=feature_layer, num_classes=10)
    runs: dict[int, list[dict]] = {}
    timing, sections = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        source = resnet_states if args.model == "resnet" else smallcnn_states
        model, datamodule, states, epochs = source(args, seed)
        t1 = time.perf_counter()
        probe = stratified_probe(datamodule, args.probe_size, seed=0)
        rows = analyse_run(model, states, probe, config, layers, feature_layer)
        for row, epoch_row in zip(rows, epochs, strict=True):
            row["val_acc"], row["val_loss"] = epoch_row["val_acc"], epoch_row["val_loss"]
        runs[seed] = rows
        (out / f"class_structure_{args.model}_seed{seed}.json").write_text(
            json.dumps(rows, indent=1, default=str))
        timing.append(f"seed {seed}: weights {t1 - t0:.0f} s, class analyses "
                      f"{sum(r['seconds'] for r in rows):.1f} s")
        sections += ["", f"### Seed {seed}: per epoch", "", epoch_table(rows, layers)]
        reasons = sorted({f"{k}: {v}" for r in rows for k, v in r["reasons"].items()})
        if reasons:
            sections += ["", "Reasons from `analyze_classes`: " + " / ".join(reasons)]
    accuracies = {s: rows[-1]["val_acc"] for s, rows in runs.items()}
    generated = "\n".join([
        f"Command: `{command_line()}`",
        "",
        f"Machine: {machine_line()}. Wall time {time.perf_counter() - started:.0f} s "
        f"({'; '.join(timing)}).",
        "",
        protocol(args, accuracies),
        "",
        "### Claims (computed)",
        "",
        *claim_lines(runs, layers),
        *sections,
    ])
    path = write_results(args.results, "class_structure: class-specific features and class "
                         "overlap through training", generated,
                         block_name="resnet" if args.model == "resnet" else None)
    print(generated)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
