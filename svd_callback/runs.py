"""Read the spectral records of finished runs back, for side-by-side comparison.

A run directory is searched for ``spectral_history.jsonl`` (every record the callback wrote) and,
failing that, for TensorBoard event files whose tags follow the fixed patterns
``spectral/<metric>[.<mode>]/<layer>`` and ``all_layers/<metric>[.<mode>]``
(``spectral_summary/<metric>[.<mode>]`` in runs logged before).

Damaged input is skipped and named in :attr:`Run.problems` (lines of a history file that are not
rows, rows of other runs in the same file, event files whose records are not events); a run
with nothing readable left is a :class:`RunReadError`, one line.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from svd_callback.config import DEFAULT_HISTORY_FILE as HISTORY_FILE
from svd_callback.monitor.text import primary_mode_in
from svd_callback.sinks.history import scan_history
from svd_callback.sinks.tags import (
    ALERT_COUNT_TAG,
    ALERT_TOTAL_TAG,
    CONVENTIONS_TAG,
    EPOCH_TAG,
    SUMMARY_LAYER,
    parse_tag,
)

COLUMNS = ["epoch", "step", "layer", "mode", "metric", "value"]


class RunReadError(ValueError):
    """A run directory that cannot be read; the message says why, in one line."""


@dataclass
class Run:
    """One run's spectral records as a long table, plus its alerts."""

    name: str
    path: Path
    source: str
    records: pd.DataFrame
    alerts: list[dict] = field(default_factory=list)
    primary_mode: str | None = None
    """The first conv mode of the run (None: a TensorBoard run that does not say; its primary
    mode's tags carry no mode suffix)."""
    problems: list[str] = field(default_factory=list)
    """What could not be read (a truncated event file, a partial last history line)."""

    def _mode_mask(self, mode: str | None) -> pd.Series:
        frame = self.records
        wanted = mode if mode is not None else self.primary_mode
        mask = frame["mode"] == wanted if wanted is not None else frame["mode"].isna()
        if mode is not None and not mask.any() and self.primary_mode is None:
            mask = frame["mode"].isna()  # TensorBoard: the primary mode's tags are unnamed
        return mask

    def series(self, metric: str, layer: str = SUMMARY_LAYER, mode: str | None = None) -> pd.Series:
        """Values of ``metric`` for ``layer`` and ``mode`` (default: the primary mode) indexed by
        epoch (the last value per epoch)."""
        frame = self.records
        mask = (frame["metric"] == metric) & (frame["layer"] == layer) & self._mode_mask(mode)
        picked = frame[mask].sort_values(["epoch", "step"])
        return picked.groupby("epoch")["value"].last()

    def summary_metrics(self, mode: str | None = None) -> list[str]:
        """The model-level metrics logged in ``mode`` (default: the primary mode), sorted."""
        frame = self.records
        mask = (frame["layer"] == SUMMARY_LAYER) & self._mode_mask(mode)
        return sorted(frame.loc[mask, "metric"].unique())

    def modes(self) -> list[str]:
        """The conv modes with records; ``primary`` for a TensorBoard run's unnamed one."""
        named = [str(m) for m in self.records["mode"].dropna().unique()]
        unnamed = ["primary"] if self.records["mode"].isna().any() else []
        return unnamed + named

    def alert_epochs(self) -> list[int]:
        """The epochs at which alerts were raised, sorted (an event-file alert, which has a step
        only, takes the epoch of that step's records)."""
        epoch_at = self.records.dropna(subset=["epoch"]).groupby("step")["epoch"].first()
        epochs = set()
        for alert in self.alerts:
            epoch = alert.get("epoch")
            if epoch is None and alert.get("step") in epoch_at.index:
                epoch = epoch_at[alert["step"]]
            if epoch is not None:
                epochs.add(int(epoch))
        return sorted(epochs)

    def last_epoch(self, mode: str | None = None) -> int | None:
        """The last epoch with a model-level record in ``mode`` (None: none)."""
        frame = self.records
        epochs = frame.loc[(frame["layer"] == SUMMARY_LAYER) & self._mode_mask(mode), "epoch"]
        epochs = epochs.dropna()
        return int(epochs.max()) if len(epochs) else None


def distinct_names(paths: list[Path]) -> list[str]:
    """Each path's shortest trailing run of folders that no other path ends in, e.g.
    ``a/lightning_logs/version_0`` and ``b/lightning_logs/version_0`` -> ``a/lightning_logs/
    version_0`` and ``b/lightning_logs/version_0``; ``runs/x`` and ``runs/y`` -> ``x``, ``y``.
    The same folder given twice is told apart by ``#2``, ``#3``."""
    parts = [Path(p).resolve().parts for p in paths]
    names = []
    for i, mine in enumerate(parts):
        others = [theirs for j, theirs in enumerate(parts) if j != i and theirs != mine]
        k = 1
        while k < len(mine) and any(theirs[-k:] == mine[-k:] for theirs in others):
            k += 1
        names.append("/".join(mine[-k:]).lstrip("/") or "/")
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def read_run(path: str | Path) -> Run:
    """Read a run from its log directory (or any parent of it).

    A folder holding several runs is read as one (the newest history file, or every event file)
    and ``problems`` says so.
    """
    root = Path(path)
    if not root.exists():
        raise RunReadError(f"no such directory: {root}")
    if not root.is_dir():
        raise RunReadError(f"{root} is not a directory")
    histories = sorted(root.rglob(HISTORY_FILE), key=lambda p: p.stat().st_mtime)
    if histories:
        run = _from_history(root, histories[-1])
        if len(histories) > 1:
            run.problems.append(_several(root, "history files", histories, f"read {histories[-1]}"))
        return run
    events = sorted(root.rglob("events.out.tfevents.*"))
    if events:
        run = _from_events(root, events)
        folders = sorted({event.parent for event in events})
        if len(folders) > 1:
            run.problems.append(_several(root, "folders of event files", folders,
                                         "merged them as one run"))
        return run
    raise RunReadError(f"{root} holds neither {HISTORY_FILE} nor TensorBoard event files")


def _several(root: Path, what: str, paths: list[Path], action: str) -> str:
    listed = ", ".join(str(p.relative_to(root)) for p in paths[:3])
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return (f"{root} holds {len(paths)} {what} ({listed}{more}); {action}; pass one run's own "
            "folder to choose")


def _from_history(root: Path, history: Path) -> Run:
    """The rows of one run in ``history``: lines that are not rows and malformed rows are
    skipped, and of several runs writing one file (told apart by ``run_id``) the last started
    is read; ``problems`` says what was skipped."""
    rows, alerts, problems = [], [], []
    try:
        scan = scan_history(history)
    except OSError as error:
        raise RunReadError(f"cannot read {history}: {error}") from None
    bad_lines = scan.describe()
    if scan.partial_end:
        last = max(number for lines in scan.skipped.values() for number in lines)
        problems.append(f"{history} ends in a partial line ({last}), skipped (the run stopped "
                        "while writing it)")
        if scan.n_skipped > 1:
            problems.append(f"{history}: {bad_lines}")
    elif bad_lines is not None:
        problems.append(f"{history}: {bad_lines}")
    items, malformed = [], 0
    for item in scan.rows:
        if _row_problem(item) is None:
            items.append(item)
        else:
            malformed += 1
    if malformed:
        problems.append(f"{history}: {malformed} row{'s' * (malformed > 1)} with fields of the "
                        "wrong type skipped")
    items, others = _one_run(items)
    if others:
        problems.append(f"{history} holds rows of {others[0]} runs (run_id); read the last "
                        f"started, {items[0].get('run_id') if items else None}, and skipped the "
                        f"{others[1]} rows of the others")
    for item in items:
        kind = item.get("type", "layer")
        if kind == "alert":
            alerts.append(item)
            continue
        if kind == "training":  # the trainer's own scalars, seen by the alert rules
            continue
        layer = item.get("layer", SUMMARY_LAYER) if kind != "summary" else SUMMARY_LAYER
        for metric, value in (item.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append((item.get("epoch"), item.get("step"), layer, item.get("mode"),
                             metric, float(value)))
    records = pd.DataFrame(rows, columns=COLUMNS)
    if records.empty:
        skipped = "; ".join(problems)
        raise RunReadError(f"{history} holds no spectral records"
                           + (f" ({skipped})" if skipped else ""))
    primary = records["mode"].dropna()
    return Run(root.name or str(root), root, str(history), records, alerts,
               primary_mode=str(primary.iloc[0]) if len(primary) else None, problems=problems)


def _row_problem(item: dict) -> str | None:
    """Why a history row cannot be read (a field of the wrong type), or None."""
    for key in ("epoch", "step"):
        value = item.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{key} is not a number"
    for key in ("type", "layer", "mode", "run_id"):
        if item.get(key) is not None and not isinstance(item[key], str):
            return f"{key} is not a string"
    if item.get("metrics") is not None and not isinstance(item["metrics"], dict):
        return "metrics is not an object"
    return None


def _one_run(items: list[dict]) -> tuple[list[dict], tuple[int, int] | None]:
    """The rows of the last started run (the ``run_id`` of the last ``run`` row, else of the
    last row), and (runs in the file, rows skipped) when the file holds several; rows without a
    ``run_id`` (written before ids) count as one run."""
    ids = list(dict.fromkeys(item.get("run_id") for item in items))
    if len(ids) < 2:
        return items, None
    starts = [item.get("run_id") for item in items if item.get("type") == "run"]
    chosen = starts[-1] if starts else items[-1].get("run_id")
    kept = [item for item in items if item.get("run_id") == chosen]
    return kept, (len(ids), len(items) - len(kept))


def _from_events(root: Path, events: list[Path]) -> Run:
    """Read every folder of event files as TensorBoard does: the files of one folder in order,
    with the values an interrupted run wrote after its checkpoint purged at the resumed run's
    restart marker (``SessionLog.START``, TensorBoard's ``purge_step``), so that every step has
    one value."""
    rows, alerts, problems, primary = [], [], [], None
    problems.extend(p for p in map(event_file_problem, events) if p is not None)
    for folder in sorted({event.parent for event in events}):
        acc = _accumulate(folder, [e for e in events if e.parent == folder], problems)
        if acc is None:
            continue
        for text_tag in acc.Tags().get("tensors", []):
            if text_tag in (CONVENTIONS_TAG, f"{CONVENTIONS_TAG}/text_summary"):
                primary = primary or _primary_mode(acc.Tensors(text_tag))
        tags = acc.Tags().get("scalars", [])
        epoch_at = completed_epochs(acc.Scalars(EPOCH_TAG)) if EPOCH_TAG in tags else {}
        for tag in tags:
            parsed = parse_tag(tag)
            if parsed is None:
                continue
            layer, metric, mode = parsed
            for event in acc.Scalars(tag):
                rows.append((epoch_at.get(event.step), event.step, layer, mode, metric,
                             float(event.value)))
        alerts.extend(_alert_counts(acc, tags))
    records = pd.DataFrame(rows, columns=COLUMNS)
    if records.empty:
        if problems:
            raise RunReadError(f"{root} has no readable spectral/ tags: {'; '.join(problems)}")
        raise RunReadError(f"{root} has TensorBoard events but no spectral/ tags "
                           "(was the run logged with SpectralMonitor?)")
    if primary is not None:  # name the primary mode's unnamed tags
        records["mode"] = records["mode"].fillna(primary)
    return Run(root.name or str(root), root, "tensorboard", records, alerts,
               primary_mode=primary, problems=problems)


def _alert_counts(acc: Any, tags: list[str]) -> list[dict]:
    """The analyses that raised alerts, ``{"step", "count"}``: from ``alerts/count`` (runs
    logged before it left the loggers) or else from the rises of the cumulative
    ``alerts/total``."""
    if ALERT_COUNT_TAG in tags:
        return [{"step": e.step, "count": e.value}
                for e in acc.Scalars(ALERT_COUNT_TAG) if e.value > 0]
    if ALERT_TOTAL_TAG not in tags:
        return []
    out, before = [], 0.0
    for event in sorted(acc.Scalars(ALERT_TOTAL_TAG), key=lambda e: e.step):
        if event.value > before:
            out.append({"step": event.step, "count": event.value - before})
        before = event.value
    return out


def _accumulate(folder: Path, files: list[Path], problems: list[str]):
    """TensorBoard's ``EventAccumulator`` over ``folder``, loaded. An event file holding a record
    that is not an event (valid framing, a payload that does not decode) stops TensorBoard's
    reader with an error; such files are named in ``problems`` and the folder is read without
    them (None: no file left)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def load(path: Path) -> EventAccumulator:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0},
                               purge_orphaned_data=True)
        acc.Reload()
        return acc

    try:
        return load(folder)
    except Exception:  # noqa: BLE001 - a damaged file: find it and read the others
        pass
    bad = {}
    for path in files:
        reason = undecodable_record(path)
        if reason is not None:
            bad[path] = reason
            problems.append(f"{path}: {reason}; the file is skipped")
    good = [path for path in files if path not in bad]
    if not good:
        return None
    try:
        with tempfile.TemporaryDirectory() as linked:  # the good files, as one folder
            for path in good:
                os.symlink(path.resolve(), Path(linked) / path.name)
            return load(Path(linked))
    except Exception as error:  # noqa: BLE001
        problems.append(f"cannot read the event files in {folder} ({type(error).__name__}: "
                        f"{' '.join(str(error).split())}); the folder is skipped")
        return None


def undecodable_record(path: Path) -> str | None:
    """The first record of the event file ``path`` whose payload is not a TensorBoard
    ``Event`` (e.g. ``record 3 is not an event (DecodeError: ...)``), or None."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    read = 0
    try:
        for record in RawEventFileLoader(str(path)).Load():
            event_pb2.Event.FromString(record)
            read += 1
    except Exception as error:  # noqa: BLE001 - the reason is the answer
        return (f"record {read + 1} is not an event ({type(error).__name__}: "
                f"{' '.join(str(error).split())})")
    return None


def _primary_mode(text_events) -> str | None:
    """The mode marked primary in the callback's conventions text (None: not found)."""
    return primary_mode_in(value.decode("utf-8", "replace") for event in text_events
                           for value in event.tensor_proto.string_val)


def event_file_problem(path: Path) -> str | None:
    """Why TensorBoard would stop reading ``path`` early, or None for a whole file.

    An event file is a sequence of TFRecords: ``uint64 length``, ``uint32 crc(length)``,
    ``length`` bytes of data, ``uint32 crc(data)`` (little endian). TensorBoard's reader stops
    silently at a record the file ends inside of; this walk finds that record.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        offset, count = 0, 0
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                break
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + 12 + length + 4
            if end > size:
                break
            f.seek(end)
            offset, count = end, count + 1
        else:
            return None
    return (f"{path} is truncated: it ends inside record {count + 1} (byte {offset} of {size}); "
            f"only the first {count} records are readable")


def completed_epochs(epoch_events) -> dict[int, int]:
    """step -> epochs completed at that step, from the ``epoch`` tag.

    The callback logs ``trainer.current_epoch`` there, and Lightning's own logging writes the
    next epoch's number at the same step when a new epoch starts, so the smallest value per step
    is the epoch the analysis closed. Analyses after step 0 close epoch e, i.e. e + 1 epochs are
    completed (the history file's convention, 0 = initial weights); step 0 is the initial
    analysis. A mid-epoch ``every_n_steps`` analysis counts as its epoch's end.
    """
    smallest: dict[int, int] = {}
    for event in epoch_events:
        value = int(event.value)
        smallest[event.step] = min(value, smallest.get(event.step, value))
    return {step: 0 if step == 0 else value + 1 for step, value in smallest.items()}
