"""Correlation traps of the digits SmallCNN (the config's settings) per epoch, from centred and
from uncentred (WeightWatcher's) shuffles of the same weights: how many layers show a "trap"
made by the weights' mean alone.

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python -m experiments.alert_rules.traps [lr ...]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.alert_rules.traps")

import sys

import lightning.pytorch as pl
import torch

from experiments.common import trainer_for
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.layers import find_layers
from svd_callback.rmt import trap_matrix, trap_metrics


def layer_traps(model: torch.nn.Module, ww_compat: bool) -> dict[str, float]:
    """num_traps of each conv/linear layer (unfold matrix, raw eigenvalues, seed 0)."""
    out = {}
    for spec in find_layers(model)[0]:
        w = spec.weight.detach().reshape(spec.weight_shape[0], -1).double()
        shuffled = trap_matrix(w, torch.Generator().manual_seed(0), ww_compat=ww_compat)
        n, m = max(w.shape), min(w.shape)
        eigs = torch.linalg.svdvals(w) ** 2
        out[spec.name] = trap_metrics(eigs, torch.linalg.svdvals(shuffled) ** 2, n, m)[
            "num_traps"]
    return out


class TrapCounter(pl.Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict, dict]] = []

    def _count(self, trainer, module) -> None:
        self.rows.append((trainer.current_epoch, layer_traps(module, False),
                          layer_traps(module, True)))

    def on_train_start(self, trainer, module) -> None:
        self._count(trainer, module)

    def on_train_epoch_end(self, trainer, module) -> None:
        self._count(trainer, module)


def main(lrs: list[float], epochs: int = 10) -> None:
    print("| lr | epoch | layers with traps, centred | layers with traps, uncentred (ww_compat) |")
    print("|---|---|---|---|")
    for lr in lrs:
        pl.seed_everything(0, verbose=False)
        counter = TrapCounter()
        trainer_for(epochs, [counter]).fit(SmallCNN(lr=lr), datamodule=DigitsDataModule())
        for k, (_, centred, uncentred) in enumerate(counter.rows):
            def names(d):
                return ", ".join(f"{n} ({v:.0f})" for n, v in d.items() if v >= 1) or "none"
            print(f"| {lr} | {k} | {names(centred)} | {names(uncentred)} |")


if __name__ == "__main__":
    main([float(a) for a in sys.argv[1:]] or [0.003, 0.03])
