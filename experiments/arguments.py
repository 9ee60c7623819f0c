"""The command-line flags the seed-paper experiments share (run as modules; not a script)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from svd_callback.examples.data import FASHION_MNIST_ROOT


def seeded_parser(description: str, here: Path, seeds: Sequence[int],
                  derived: Path) -> argparse.ArgumentParser:
    """``--root`` (the Fashion-MNIST IDX files), ``--seeds`` (the training seeds read),
    ``--derived`` (the folder of derived data written) and ``--results`` (the RESULTS.md whose
    tables are rebuilt, default ``here/RESULTS.md``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", default=FASHION_MNIST_ROOT,
                        help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    parser.add_argument("--derived", default=str(derived))
    parser.add_argument("--results", default=str(here / "RESULTS.md"))
    return parser
