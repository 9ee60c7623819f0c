"""The callback's JSON-lines history file: where it lives, the ``run`` row at each start, one
``layer`` row per record, ``summary``, ``training``, ``alert`` and ``class`` rows per analysis,
each with the run's id, and the cut back to the checkpoint's last analysis on resume. The rows
themselves are :mod:`svd_callback.sinks.history_rows`'s (``docs/conventions.md``)."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from svd_callback.config import MonitorConfig
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.result import AnalysisResult
from svd_callback.sinks.history import HistoryFile, scan_history
from svd_callback.sinks.history_rows import (
    alert_row,
    layer_row,
    run_row,
    summary_row,
    training_row,
)

__all__ = ["HistoryWriter", "configured_path", "distinct_path"]


def configured_path(history_file: str | None, log_dirs: list[str], root_dir: str) -> Path | None:
    """The file ``history_file`` names: absolute as given, else in the first logger's log
    directory, else in the trainer's ``default_root_dir`` (None: no history file)."""
    if history_file is None:
        return None
    path = Path(history_file)
    if path.is_absolute():
        return path
    for log_dir in log_dirs:
        if log_dir:
            return Path(log_dir) / path
    return Path(root_dir) / path


def trainer_path(history_file: str | None, trainer: Any) -> Path | None:
    """:func:`configured_path` with a Lightning ``Trainer``'s loggers and root directory; None
    under ``fast_dev_run``, which writes no logs."""
    if getattr(trainer, "fast_dev_run", False):
        return None
    log_dirs = [getattr(logger, "log_dir", None) for logger in trainer.loggers]
    return configured_path(history_file, log_dirs, trainer.default_root_dir)


def distinct_path(
    path: Path | None,
    earlier: list[Path | None],
    position: int,
    guard: Guard,
    who: str,
    has_loggers: bool,
) -> Path | None:
    """The history file of the ``position``-th monitor (0-based) of a Trainer: ``path``, or
    ``<stem>-<position + 1>.jsonl`` when an earlier monitor's file (``earlier``) is the same, so
    no two monitors write one file (a warning names it, and ``who`` the monitor). The second
    monitor also warns that monitors sharing loggers share tags."""
    if path is None:
        return None
    if path in set(earlier):
        path = path.with_name(f"{path.stem}-{position + 1}{path.suffix}")
        guard.warn(f"another SpectralMonitor of this Trainer writes the same history file; "
                   f"this one ({who}) writes {path}")
    if position == 1 and has_loggers:
        guard.warn("several SpectralMonitors log to the same loggers: their tags coincide for "
                   "the layers and modes they both analyse (give them disjoint include/exclude "
                   "patterns)")
    return path


class HistoryWriter:
    """Writes the rows of each analysis to :attr:`path` (None: no file), each row with
    :attr:`run_id`.

    A failed write (a full disk) leaves the file cut back to its last complete row
    (:meth:`~svd_callback.sinks.history.HistoryFile.append`) and is reported once per fit; the
    next analysis is written again.
    """

    def __init__(self, config: MonitorConfig, guard: Guard) -> None:
        self.config = config
        self.guard = guard
        self.path: str | None = None
        self.run_id: str | None = None

    def reset(self) -> None:
        """Forget the run (a new run: a new file path and id at the next :meth:`start`)."""
        self.path = None
        self.run_id = None

    def state_dict(self) -> dict[str, Any]:
        """``history_path`` and ``run_id``, for the callback's checkpointed state."""
        return {"history_path": self.path, "run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a state written before run ids has none: None)."""
        self.path = state["history_path"]
        self.run_id = state.get("run_id")

    def start(
        self,
        path: Path | None,
        *,
        resumed: bool,
        step: int,
        epoch: int,
        world_size: int,
        last_analysed: int | None = None,
    ) -> None:
        """Open ``path`` for this fit and write the ``run`` row.

        A new run gets a new :attr:`run_id`; a resumed run keeps its checkpoint's. On resume
        the run's rows after its checkpoint are cut: analysis rows after ``last_analysed`` (the
        checkpoint's last analysed step; a checkpoint can be taken at a step whose analysis
        comes after it) and ``run`` rows after ``step`` (the checkpoint's global step). The file
        cut is ``path`` when it holds rows, else the checkpoint's file, copied into ``path``.
        Rows of other runs are kept; lines that are not rows are dropped, with a warning.
        """
        if path is None:
            return
        if not resumed or self.run_id is None:
            owned_by_id = False  # a checkpoint that predates run ids: every row is the run's
            self.run_id = uuid.uuid4().hex
        else:
            owned_by_id = True
        history = HistoryFile(path)
        previous = self.path
        if resumed:
            source = path if history.size() else (Path(previous) if previous else None)
            same_file = previous is not None and Path(previous).resolve() == path.resolve()
            if source is None:
                pass  # the checkpoint's run wrote no history file
            elif not source.exists():
                self.guard.warn(f"the checkpoint's spectral history {previous} is gone; {path} "
                                f"holds the rows from step {step} on only")
            elif owned_by_id or same_file or source != path:
                self._cut(history, source, step, last_analysed, owned_by_id)
        self.path = str(path)
        self._append([run_row("resume" if resumed else "start", step, epoch, self.run_id,
                              self.config.analysis, world_size, time.time())],
                     f"the run row of step {step}")

    def _cut(self, history: HistoryFile, source: Path, step: int, last_analysed: int | None,
             owned_by_id: bool) -> None:
        """Write ``source``'s rows that the resumed run keeps into ``history``."""
        try:
            scan = scan_history(source)
        except OSError as error:
            self.guard.warn(f"cannot read the spectral history {source} ({error}); rows after "
                            f"step {last_analysed} may appear twice")
            return
        kept, dropped = [], 0
        for row in scan.rows:
            mine = not owned_by_id or row.get("run_id") == self.run_id
            limit = step if row.get("type") == "run" else last_analysed
            row_step = _step_of(row)
            if mine and (limit is None or row_step is None or row_step > limit):
                dropped += 1
            else:
                kept.append(row)
        if scan.describe() is not None:
            self.guard.warn(f"the spectral history {source}: {scan.describe()}; they are "
                            f"dropped as it is cut back to the checkpoint")
        try:
            _rewrite(history, kept)
        except OSError as error:
            self.guard.warn(f"cannot cut the spectral history {history.path} back to the "
                            f"checkpoint ({error}); rows after step {last_analysed} may appear "
                            f"twice")
            return
        rank_zero_info(f"SpectralMonitor: resuming the spectral history in {history.path} after "
                       f"step {last_analysed} ({len(kept)} rows kept, {dropped} cut).")

    def _append(self, rows: list[dict[str, Any]], what: str) -> None:
        """Append ``rows``; a failed write is reported once per fit and costs only ``what``."""
        try:
            HistoryFile(self.path).append(rows)
        except OSError as error:
            self.guard.warn_once(f"history-write:{self.path}", (
                f"{what} could not be written to the spectral history: {error}; later "
                f"analyses are still written (further failures are not reported)"))

    def write(self, result: AnalysisResult) -> None:
        """The ``layer``, ``summary``, ``training`` and ``alert`` rows of one analysis."""
        if self.path is None:
            return
        analysis = self.config.analysis
        common = self._common(result)
        rows = [layer_row(record, common, fit=analysis.fit, ww_compat=analysis.ww_compat,
                          rank=result.owners.get(record.name, 0)) for record in result.report]
        rows += [summary_row(mode, aggregates, common, analysis, result.seconds)
                 for mode, aggregates in result.summary.items()]
        if result.training:
            rows.append(training_row(result.training, common))
        rows += [alert_row(alert, ranks, common, analysis)
                 for alert, ranks in zip(result.alerts, result.alert_ranks, strict=False)]
        self._append(rows, f"the rows of step {result.step}")

    def write_classes(self, result: AnalysisResult, settings: dict[str, Any]) -> None:
        """The ``class`` rows of one analysis (``settings``: probe size and the edge-rule settings,
        :meth:`~svd_callback.monitor.class_stage.ClassStage.history_fields`)."""
        if self.path is None or result.class_report is None:
            return
        common = {**self._common(result), **settings}
        self._append([{**row, **common} for row in result.class_report.rows()],
                     f"the class rows of step {result.step}")

    def _common(self, result: AnalysisResult) -> dict[str, Any]:
        return {"epoch": result.epoch, "epochs_trained": result.epochs_trained,
                "step": result.step, "trigger": result.trigger, "run_id": self.run_id}


def _step_of(row: dict[str, Any]) -> int | None:
    """The row's ``step`` as an int (None: missing or not a number)."""
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
        return None
    return int(step)


def _rewrite(history: HistoryFile, rows: list[dict[str, Any]]) -> None:
    """Replace the file's content with ``rows`` atomically (a failed write leaves it as it
    was)."""
    tmp = HistoryFile(history.path.with_name(history.path.name + ".tmp"))
    try:
        if tmp.path.exists():
            tmp.path.unlink()
        tmp.append(rows)
        tmp.path.replace(history.path)
    finally:
        if tmp.path.exists():
            tmp.path.unlink()
