"""The JSON-lines history file: one JSON object per line, appended and flushed per analysis.

Rows are plain JSON (non-finite numbers become ``null``; their reason is in the row's ``notes``
or ``reason``), so the file reads back with ``pandas.read_json(path, lines=True)`` or
:func:`read_history`. Each write opens the file in append mode, writes whole lines, flushes and
fsyncs, and closes it again: a crash loses at most the analysis being written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svd_callback.config import DEFAULT_HISTORY_FILE

__all__ = [
    "HISTORY_FILENAME",
    "HistoryFile",
    "read_history",
    "to_json",
]

HISTORY_FILENAME = DEFAULT_HISTORY_FILE
"""The history file's default name, defined once in :mod:`svd_callback.config`."""


class HistoryFile:
    """Append-only JSON-lines file at ``path`` (its directory is created when needed)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append ``rows`` as JSON lines; returns the file size in bytes afterwards."""
        text = "".join(json.dumps(to_json(row), allow_nan=False) + "\n" for row in rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            return handle.tell()

    def size(self) -> int:
        """Current size in bytes (0 when the file does not exist)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> bool:
        """Cut the file back to ``size`` bytes (rows written after a checkpoint that a resumed run
        will write again). Returns True if anything was removed."""
        if not self.path.exists() or self.path.stat().st_size <= size:
            return False
        with open(self.path, "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())
        return True


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a history file (a trailing partial line, from a crash mid-write, is dropped)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def to_json(value: Any) -> Any:
    """``value`` with tensors/arrays as lists, tuples as lists and non-finite floats as None."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_json(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_json(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)
