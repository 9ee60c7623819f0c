"""Pilot zoo runs: train a few epochs of chosen kinds into a scratch folder and print what each
epoch did (validation accuracy and loss, training loss, the probe's dead-ReLU and saturation
fractions, the gradient-norm ratio of the first to the last weight matrix, the largest weight,
and the monitor's spectral norms), so that each failure setting can be checked to do what its
name says before any run that reports is trained.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.alert_zoo.pilot --pair fashion_mlp \
        --kinds adam dying_relu --epochs 3 --out /tmp/zoo_pilot
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.alert_zoo.pilot")

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.alert_zoo.train import train_run
from experiments.alert_zoo.zoo import PAIRS
from svd_callback.examples.data import FASHION_MNIST_ROOT


def epoch_lines(record: dict[str, Any]) -> list[str]:
    """One line per analysis epoch of a record."""
    norms: dict[int, list[float]] = {}
    for row in record["history"]:
        if row.get("type") == "layer" and row.get("metrics"):
            value = row["metrics"].get("spectral_norm")
            norms.setdefault(int(row["epoch"]), []).append(
                float("nan") if value is None else float(value))
    lines = []
    for row, probe in zip(record["epochs"], record["probe"], strict=False):
        k = int(row["epoch"])
        kernels = [p for p in probe["params"].values() if p["ndim"] >= 2]
        ratio = (kernels[0]["grad_norm"] or 0.0) / (kernels[-1]["grad_norm"] or float("nan")) \
            if kernels else float("nan")
        relus = [a["le0"] for a in probe["activations"] if a["kind"] == "relu"
                 and a["le0"] is not None]
        saturated = [a["saturated"] for a in probe["activations"]
                     if a["kind"] in ("sigmoid", "tanh") and a["saturated"] is not None]
        w_max = max((p.get("w_abs_max") or 0.0 for p in probe["params"].values()), default=0.0)
        sn = norms.get(k, [])
        lines.append(
            f"  epoch {k:2d}: val acc {row['val_acc']:.3f} val loss {row['val_loss']:.4g} "
            f"train loss {row['train_loss']:.4g} lr {row.get('lr', float('nan')):.3g} | "
            f"relu<=0 max {max(relus, default=float('nan')):.2f} sat max "
            f"{max(saturated, default=float('nan')):.2f} grad first/last {ratio:.3g} "
            f"|w|max {w_max:.3g} | sigma_max {', '.join(f'{v:.3g}' for v in sn[:6])}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", required=True, choices=sorted(PAIRS))
    parser.add_argument("--kinds", nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="scratch folder (never the cache)")
    parser.add_argument("--root", default=FASHION_MNIST_ROOT)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pair = PAIRS[args.pair]
    kinds = args.kinds or [k.name for k in pair.kinds]
    for name in kinds:
        kind = pair.kind(name)
        record, _ = train_run(pair, kind, args.seed, root=Path(args.out), epochs=args.epochs,
                              data_root=args.root, retrain=True)
        print(f"{pair.name}/{kind.name} ({kind.role}; {kind.what}): {record['seconds']:.1f} s "
              f"for {record['epochs_planned']} epochs", flush=True)
        print("\n".join(epoch_lines(record)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
