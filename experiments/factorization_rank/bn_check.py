"""Post-hoc check (not in the protocol): is the high CP fit of the initial network a BatchNorm
running-statistics effect? The initial weights of each healthy run, with every BatchNorm's
running mean and variance re-estimated on 40 training batches (a cumulative average, no weight
changed), factorised as in ``experiments.factorization_rank.run``.

    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.factorization_rank.bn_check

writes ``derived/bn_check.csv`` and rebuilds the tables (``experiments.factorization_rank.tables``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.factorization_rank.bn_check")

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from experiments.data_check import require_fashion_mnist
from experiments.derived import write_rows
from experiments.factorization_rank.run import COLUMNS, DERIVED, HERE, factorise_state
from experiments.resnet_checkpoints import RESNET, trained_run
from svd_callback.examples.data import FASHION_MNIST_ROOT

BATCHES = 40


@torch.no_grad()
def with_data_statistics(model: nn.Module, loader, batches: int = BATCHES) -> nn.Module:
    """``model`` with its BatchNorm running statistics re-estimated on ``batches`` training
    batches (``momentum=None``: the plain average), its weights untouched, in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    for index, (x, _) in enumerate(loader):
        if index >= batches:
            break
        model(x)
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=FASHION_MNIST_ROOT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--derived", default=str(DERIVED))
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args(argv)
    require_fashion_mnist(args.root)
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        datamodule = RESNET.datamodule(RESNET.kind("sgd_cosine_wd"), seed, root=args.root)
        datamodule.setup("fit")
        torch.manual_seed(seed)
        model = with_data_statistics(trained_run(seed, root=args.root).model(0),
                                     datamodule.train_dataloader())
        rows += [r for r in factorise_state(model, datamodule.val_set,
                                            {"seed": seed, "state": "init, BN statistics "
                                                                    "from data"})
                 if r["variant"] != "channel-permuted"]
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    write_rows(Path(args.derived) / "bn_check.csv", rows, COLUMNS)
    from experiments.factorization_rank import tables

    tables.main(["--derived", args.derived, "--results", args.results])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
