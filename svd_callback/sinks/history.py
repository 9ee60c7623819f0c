"""The JSON-lines history file: one JSON object per line, appended and flushed per analysis.

Rows are plain JSON (non-finite numbers become ``null``; their reason is in the row's ``notes``
or ``reason``), so the file reads back with ``pandas.read_json(path, lines=True)`` or
:func:`read_history`.

Writing (:meth:`HistoryFile.append`): each write opens the file in append mode, writes whole
lines in one call, fsyncs and closes it again. A write that fails part-way (a full disk) is cut
back to the file's size before it, so a torn line never joins the next row; a file that does not
end in a newline (a crash mid-write) gets one before the next row. A crash therefore loses at
most the analysis being written.

Reading (:func:`scan_history`): a line that is not UTF-8, not JSON or not a JSON object is
skipped and counted by kind, never an error; :func:`read_history` returns the rows.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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


class HistoryWriteError(OSError):
    """An append failed; the message says what became of the file (cut back or not)."""


class HistoryFile:
    """Append-only JSON-lines file at ``path`` (its directory is created when needed)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append ``rows`` as JSON lines; returns the file size in bytes afterwards.

        Raises:
            HistoryWriteError: the write failed; the file was cut back to its size before the
                write (the message says if even that failed: the next append then starts a
                fresh line).
        """
        data = "".join(json.dumps(to_json(row), allow_nan=False) + "\n"
                       for row in rows).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data  # the torn last line of a crash stays a line of its own
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError as error:
                raise HistoryWriteError(_cut_back(fd, start, error, self.path)) from error
            return start + len(data)
        finally:
            os.close(fd)

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


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (a short write is retried)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"write returned {written}")
        view = view[written:]


def _cut_back(fd: int, size: int, error: OSError, path: Path) -> str:
    """Truncate the file to ``size`` after a failed write; the message for the error."""
    try:
        os.ftruncate(fd, size)
    except OSError as again:
        return (f"writing {path} failed ({error}) and cutting it back failed too ({again}); "
                f"the next row starts a fresh line")
    return f"writing {path} failed ({error}); the file is cut back to its last complete row"


SKIP_REASONS = ("not UTF-8", "not JSON", "not a JSON object")
"""Why :func:`scan_history` skips a line."""


@dataclass
class HistoryScan:
    """A history file as read by :func:`scan_history`.

    Attributes:
        rows: the JSON objects, in file order.
        skipped: line numbers (1-based) of the lines skipped, by reason (:data:`SKIP_REASONS`).
        partial_end: the file ends inside a line (a write cut short); that line is skipped.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)
    partial_end: bool = False

    @property
    def n_skipped(self) -> int:
        return sum(len(lines) for lines in self.skipped.values())

    def describe(self, shown: int = 3) -> str | None:
        """``"3 lines skipped: 2 not UTF-8 (lines 5, 9), 1 not a JSON object (line 7)"``, or
        None when every line was read."""
        if not self.n_skipped:
            return None
        parts = []
        for reason in SKIP_REASONS:
            lines = self.skipped.get(reason, [])
            if lines:
                listed = ", ".join(map(str, lines[:shown])) + (" ..." if len(lines) > shown
                                                              else "")
                parts.append(f"{len(lines)} {reason} (line{'s' * (len(lines) > 1)} {listed})")
        total = self.n_skipped
        return f"{total} line{'s' * (total > 1)} skipped: {', '.join(parts)}"


def scan_history(path: str | os.PathLike) -> HistoryScan:
    """Every JSON object of the history file at ``path``; other lines skipped and counted.

    Raises:
        OSError: the file cannot be opened.
    """
    scan = HistoryScan()
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    scan.partial_end = bool(lines[-1].strip())
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        reason = None
        try:
            item = json.loads(raw.decode("utf-8"))
            if not isinstance(item, dict):
                reason = "not a JSON object"
        except UnicodeDecodeError:
            reason = "not UTF-8"
        except (json.JSONDecodeError, RecursionError):
            reason = "not JSON"
        if reason is None:
            scan.rows.append(item)
        else:
            scan.skipped.setdefault(reason, []).append(number)
    return scan


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a history file. Lines that are not JSON objects (a partial last line from a
    crash mid-write, damaged bytes) are skipped, with one warning giving their count."""
    scan = scan_history(path)
    problem = scan.describe()
    if problem is not None:
        warnings.warn(f"{path}: {problem}", stacklevel=2)
    return scan.rows


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
