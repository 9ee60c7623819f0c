"""The command-line flags every experiment shares, and YAML defaults for them.

Each ``experiments/<name>/run.py`` builds its parser with :func:`experiment_parser` (the data,
model, training and output flags, with that experiment's defaults), adds its own flags, and
parses with :func:`parse_with_config`: a ``--config`` YAML file sets defaults, flags given on the
command line win.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from experiments.data_check import require_fashion_mnist
from svd_callback.examples.data import FASHION_MNIST_ROOT


def load_config(path: str | os.PathLike | None) -> dict[str, Any]:
    """The experiment's YAML defaults (an empty dict when ``path`` is None)."""
    if path is None:
        return {}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def experiment_parser(
    description: str,
    folder: Path,
    *,
    dataset: str = "fashion",
    train_size: int,
    val_size: int,
    epochs: int,
    lr: float = 3e-3,
    width: int = 32,
    hidden: int = 128,
    batch_size: int = 128,
) -> argparse.ArgumentParser:
    """A parser with the shared flags: ``--config``, ``--root`` (alias ``--data.root``),
    ``--dataset``, ``--train-size``, ``--val-size``, ``--epochs``, ``--lr``, ``--width``,
    ``--hidden``, ``--batch-size``, ``--out`` (default ``folder/runs``) and ``--results``
    (default ``folder/RESULTS.md``), with the given defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML file of defaults for these flags")
    parser.add_argument("--root", "--data.root", dest="root", default=FASHION_MNIST_ROOT,
                        help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--dataset", choices=["fashion", "digits"], default=dataset)
    parser.add_argument("--train-size", type=int, default=train_size, help="fashion only")
    parser.add_argument("--val-size", type=int, default=val_size, help="fashion only")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--width", type=int, default=width, help="SmallCNN conv width")
    parser.add_argument("--hidden", type=int, default=hidden, help="SmallCNN hidden units")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--out", default=str(folder / "runs"))
    parser.add_argument("--results", default=str(folder / "RESULTS.md"))
    return parser


def parse_with_config(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``argv`` with the ``--config`` file's entries as defaults (command line wins).

    Keys of the YAML file use the flag names (``train-size`` or ``train_size``). The keys named
    in ``extra`` are not flags: they are taken out and returned as the second value.
    """
    args = parser.parse_args(argv)
    config = load_config(args.config)
    taken = {key: config.pop(key) for key in extra if key in config}
    if config:
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in config.items()})
        args = parser.parse_args(argv)
    return args, taken


def require_data(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` unchanged when the run reads no Fashion-MNIST or ``--root`` holds its files;
    otherwise exit with status 2 and a one-line instruction (:func:`require_fashion_mnist`).
    Fashion-MNIST is read by ``--dataset fashion`` and by ``--model resnet``."""
    if args.dataset == "fashion" or getattr(args, "model", None) == "resnet":
        require_fashion_mnist(args.root)
    return args


def add_resnet_arguments(parser: argparse.ArgumentParser, states: str) -> None:
    """``--model`` (``smallcnn`` or ``resnet``: the cached BatchNorm ResNet-8 runs on
    Fashion-MNIST of :mod:`experiments.resnet_checkpoints`, ``states`` saying which of their
    states are read) and ``--seeds`` (the training seeds of ``--model resnet``)."""
    parser.add_argument("--model", choices=["smallcnn", "resnet"], default="smallcnn",
                        help="resnet: the cached BatchNorm ResNet-8 runs on Fashion-MNIST "
                        f"(experiments.resnet_checkpoints), {states}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds of --model resnet")
