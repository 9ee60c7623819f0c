"""The check every Fashion-MNIST experiment runs first: a missing data folder stops the run at
start with one line saying how to get the files (exit status 2), never a traceback mid-run."""

from __future__ import annotations

import sys
from pathlib import Path

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def missing_fashion_mnist(root: str | Path) -> list[str]:
    """The Fashion-MNIST IDX files absent from ``root``."""
    return [name for name in FASHION_MNIST_FILES if not (Path(root) / name).is_file()]


def require_fashion_mnist(root: str | Path) -> None:
    """Exit with status 2 and a one-line instruction when ``root`` lacks a Fashion-MNIST file."""
    missing = missing_fashion_mnist(root)
    if missing:
        print(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): run `make data` "
              "(apt-get install dataset-fashion-mnist) or pass --root FOLDER with the four IDX "
              "files", file=sys.stderr)
        sys.exit(2)
