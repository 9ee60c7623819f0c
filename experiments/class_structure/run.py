"""Class structure against its controls: class-specific features (S_c chosen on one probe split,
scored on the other) and the class overlap of every layer, for healthy and shuffled-label
ResNet-8 runs on Fashion-MNIST at every epoch (epoch 0 = the initialisation control). The
protocol is in RESULTS.md.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.class_structure.run

trains the missing runs (``experiments.resnet_checkpoints``, about 150 s each on one thread),
writes the derived data to ``experiments/class_structure/derived/`` and rebuilds the tables of
RESULTS.md from it (``experiments.class_structure.tables``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.class_structure.run")

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.data_check import require_fashion_mnist
from experiments.derived import write_json, write_rows
from experiments.resnet_checkpoints import RESNET, TrainedRun, run_kind, trained_run
from svd_callback.classes import (
    ClassAnalysisConfig,
    ClassTracker,
    ProbeSet,
    analyze_classes,
    capture_activations,
    class_specific_features,
)
from svd_callback.classes.functional import functional_test
from svd_callback.examples.data import FASHION_MNIST_ROOT

HERE = Path(__file__).resolve().parent
DERIVED = HERE / "derived"
KINDS = ("sgd_cosine_wd", "labels_100")
SEEDS = (0, 1, 2)
PROBE_SIZE = 512
SPLIT = 256
"""Split A = the first 256 probe images (S_c and hyperedges chosen there), B = the rest."""
HEAD = "head"
MASS = 0.5
DRAWS = 20
RULES = {"t0.5": 0.5, "t0.1": 0.1}
"""Hyperedge rules by influence threshold: t0.5 (this protocol), t0.1 (the library default)."""
EPOCH_COLUMNS = [
    "kind", "seed", "epoch", "test_acc", "feature_fraction", "feature_count", "selectivity",
    "acc_full_B", "acc_sc_B", "acc_random_B", "acc_full_A", "acc_sc_A", "acc_random_A",
]
LAYER_COLUMNS = [
    "kind", "seed", "epoch", "rule", "layer", "n_nodes", "n_edges", "jaccard_mean",
    "edge_size_mean", "class_specific_fraction",
]


def probe_halves(root: str) -> tuple[ProbeSet, ProbeSet]:
    """The 512-image stratified test probe (seed 0) and its halves A and B (the round-robin
    order keeps both balanced)."""
    datamodule = RESNET.datamodule(RESNET.kind("sgd_cosine_wd"), 0, root=root)
    datamodule.setup("fit")
    probe = ProbeSet.from_dataset(datamodule.val_set, size=PROBE_SIZE, seed=0)
    halves = [ProbeSet(probe.inputs[s], probe.labels[s], probe.indices[s])
              for s in (slice(0, SPLIT), slice(SPLIT, PROBE_SIZE))]
    return halves[0], halves[1]


def feature_row(model: torch.nn.Module, a: ProbeSet, b: ProbeSet) -> dict[str, float]:
    """S_c on split A (pooled head input) and the functional test scored on B and on A."""
    both = capture_activations(model, torch.cat([a.inputs, b.inputs]), [HEAD], keep="input")
    features = both[HEAD][0].to(torch.float64)
    fa, fb = features[:SPLIT], features[SPLIT:]
    chosen = class_specific_features(fa, a.labels, 10, mass=MASS)
    head = dict(model.named_modules())[HEAD]
    weight, bias = head.weight.detach(), head.bias.detach()
    held_out = functional_test(fb, b.labels, weight, bias, chosen.sets, DRAWS, seed=0)
    in_sample = functional_test(fa, a.labels, weight, bias, chosen.sets, DRAWS, seed=0)
    scalars = chosen.scalars()
    return {
        "feature_fraction": scalars["feature_fraction_mean"],
        "feature_count": scalars["feature_count_mean"],
        "selectivity": scalars["selectivity"],
        "acc_full_B": held_out["functional_acc_full"],
        "acc_sc_B": held_out["functional_acc_specific"],
        "acc_random_B": held_out["functional_acc_random"],
        "acc_full_A": in_sample["functional_acc_full"],
        "acc_sc_A": in_sample["functional_acc_specific"],
        "acc_random_A": in_sample["functional_acc_random"],
    }


def analyse_run(run: TrainedRun, a: ProbeSet, b: ProbeSet
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per epoch: the feature row, and per rule and layer the hypergraph row."""
    model = run.model(0)
    configs = {name: ClassAnalysisConfig(probe_size=SPLIT, influence_threshold=threshold,
                                         q=0.5, feature_layer=HEAD, num_classes=10)
               for name, threshold in RULES.items()}
    trackers = {name: ClassTracker() for name in RULES}
    epochs, layers = [], []
    for epoch in sorted(run.states):
        model.load_state_dict(run.states[epoch])
        model.eval()
        key = {"kind": run.kind, "seed": run.seed, "epoch": epoch}
        epochs.append({**key, "test_acc": run.epochs[epoch]["val_acc"],
                       **feature_row(model, a, b)})
        for rule, config in configs.items():
            report = analyze_classes(model, a, config, tracker=trackers[rule])
            for layer, values in report.layers.items():
                if layer not in report.n_nodes:
                    continue
                edges = report.edges.get(layer, {})
                layers.append({
                    **key, "rule": rule, "layer": layer, "n_nodes": report.n_nodes[layer],
                    "n_edges": len(edges),
                    "jaccard_mean": values.get("jaccard_mean", math.nan),
                    "edge_size_mean": (sum(len(e) for e in edges.values()) / len(edges)
                                       if edges else math.nan),
                    "class_specific_fraction": values.get("class_specific_fraction", math.nan),
                })
    return epochs, layers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=FASHION_MNIST_ROOT,
                        help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--derived", default=str(DERIVED))
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args(argv)
    require_fashion_mnist(args.root)
    torch.set_num_threads(1)
    started = time.perf_counter()
    a, b = probe_halves(args.root)
    epoch_rows, layer_rows, runs = [], [], []
    for kind in args.kinds:
        for seed in args.seeds:
            run = trained_run(seed, kind=kind, root=args.root)
            t0 = time.perf_counter()
            epochs, layers = analyse_run(run, a, b)
            epoch_rows += epochs
            layer_rows += layers
            runs.append({"kind": kind, "seed": seed, "train_seconds": run.seconds,
                         "analysis_seconds": time.perf_counter() - t0, "machine": run.machine,
                         "recipe": run_kind(kind).what})
            print(f"{kind} seed {seed}: final test acc {run.final_accuracy:.4f}, analyses "
                  f"{runs[-1]['analysis_seconds']:.0f} s", flush=True)
    derived = Path(args.derived)
    write_rows(derived / "epochs.csv", epoch_rows, EPOCH_COLUMNS)
    write_rows(derived / "layers.csv", layer_rows, LAYER_COLUMNS)
    write_json(derived / "meta.json", {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python -m experiments.class_structure.run",
        "runs": runs, "wall_seconds": time.perf_counter() - started,
        "probe": {"size": PROBE_SIZE, "split": SPLIT, "seed": 0},
    })
    from experiments.class_structure import tables

    tables.main(["--derived", str(derived), "--results", args.results])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
