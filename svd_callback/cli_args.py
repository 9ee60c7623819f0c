"""Argument checks of the ``svd-callback`` command line: a parser whose errors are one line, and
``type=`` functions that reject bad numbers, devices and output paths before any work starts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

SEED_MAX = 2**32 - 1
"""Largest seed ``lightning.seed_everything`` accepts (numpy's uint32 range)."""

MAX_INPUT_SIDE = 4096
"""Largest ``--input-size`` side: operator mode decomposes one matrix per frequency (n^2 of
them for a 2-D conv, 16.8 million at this size), and the probe batch is C x n x n floats."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


def input_side(text: str) -> int:
    """A spatial input side in [1, MAX_INPUT_SIDE]."""
    value = _int_at_least(text, 1)
    if value > MAX_INPUT_SIDE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_INPUT_SIDE}, got {value}")
    return value


def seed(text: str) -> int:
    """A random seed in [0, 2**32 - 1]."""
    value = _int_at_least(text, 0)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {SEED_MAX}, got {value}")
    return value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < low:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f">= {low}")
        raise argparse.ArgumentTypeError(f"must be {kind}, got {value}")
    return value


def device(text: str) -> str:
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``...)."""
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device (examples: cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "meta":
        raise argparse.ArgumentTypeError("the meta device holds no weights to analyse")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {count} CUDA device(s) (0 to {count - 1})")
        return text
    try:
        torch.empty(1, device=parsed)
    except Exception as error:  # any backend's "not available" error
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise argparse.ArgumentTypeError(f"{text}: device not available ({first})") from None
    return text


def output_file(text: str) -> Path:
    """A file path that can be written: not a directory, in an existing writable directory."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    parent = path.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text} is not writable")
    return path


def output_dir(text: str) -> Path:
    """A folder that exists or can be created: no file in its place or above it."""
    path = Path(text)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} exists and is not a directory")
    if not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(f"{existing} is not writable")
    return path


def warn(command: str, message: str) -> None:
    """One warning line on stderr."""
    print(f"svd-callback {command}: warning: {message}", file=sys.stderr)
