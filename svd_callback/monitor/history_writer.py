"""The callback's JSON-lines history file: where it lives, the ``run`` row at each start, one
``layer`` row per record, ``summary``, ``training``, ``alert`` and ``class`` rows per analysis,
and the cut back to the checkpoint's step on resume. Formats: ``docs/conventions.md``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from svd_callback.config import MonitorConfig
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.result import AnalysisResult
from svd_callback.sinks import tags
from svd_callback.sinks.history import HistoryFile, read_history

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
    """:func:`configured_path` with a Lightning ``Trainer``'s loggers and root directory."""
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
    """Writes the rows of each analysis to :attr:`path` (None: no file)."""

    def __init__(self, config: MonitorConfig, guard: Guard) -> None:
        self.config = config
        self.guard = guard
        self.path: str | None = None

    def start(
        self, path: Path | None, *, resumed: bool, step: int, epoch: int, world_size: int
    ) -> None:
        """Open ``path`` for this fit: on resume keep only the rows up to the restored step
        (the checkpoint's file, or a copy of it in a new log directory), then write the ``run``
        row."""
        if path is None:
            return
        history = HistoryFile(path)
        previous = self.path
        if resumed and previous:
            kept = _rows_up_to(previous, step)
            if kept is None:
                self.guard.warn(f"the checkpoint's spectral history {previous} is gone; {path} "
                                f"holds the rows from step {step} on only")
            same_file = Path(previous).resolve() == path.resolve()
            if kept is not None and (same_file or history.size() == 0):
                _rewrite(history, kept)
                rank_zero_info(f"SpectralMonitor: resuming the spectral history in {path} at "
                               f"step {step} ({len(kept)} earlier rows kept).")
        self.path = str(path)
        analysis = self.config.analysis
        history.append([{
            "type": "run",
            "event": "resume" if resumed else "start",
            "step": int(step),
            "epoch": int(epoch),
            "time": time.time(),
            "mode": analysis.primary_mode,
            "modes": list(analysis.conv_mode),
            "normalization": analysis.normalization,
            "fit": analysis.fit,
            "ww_compat": analysis.ww_compat,
            "metric_groups": list(analysis.metrics),
            "conventions": {m: tags.conventions(m, analysis.normalization, analysis.fit,
                                                analysis.ww_compat)
                            for m in analysis.conv_mode},
            "world_size": int(world_size),
        }])

    def write(self, result: AnalysisResult) -> None:
        """The ``layer``, ``summary``, ``training`` and ``alert`` rows of one analysis."""
        if self.path is None:
            return
        analysis = self.config.analysis
        common = _common(result)
        conventions = {"normalization": analysis.normalization, "fit": analysis.fit,
                       "ww_compat": analysis.ww_compat}
        rows: list[dict[str, Any]] = []
        for record in result.report:
            rows.append({
                "type": "layer",
                **common,
                "layer": record.name,
                "kind": record.kind,
                "mode": record.mode,
                "normalization": record.normalization,
                "fit": analysis.fit,
                "ww_compat": analysis.ww_compat,
                "shape": list(record.shape),
                "matrix_shape": record.matrix_shape,
                "input_size": record.input_size,
                "n_svals": None if record.svals is None else int(record.svals.numel()),
                "metrics": dict(record.metrics),
                "quality": record.quality,
                "reason": record.reason,
                "reason_code": record.reason_code,
                "notes": dict(record.notes),
                "normalized_by": record.normalized_by,
                "rank": result.owners.get(record.name, 0),
            })
        for mode, aggregates in result.summary.items():
            rows.append({"type": "summary", **common, "mode": mode, **conventions,
                         "metrics": dict(aggregates), "seconds": result.seconds})
        if result.training:
            rows.append({"type": "training", **common, "metrics": dict(result.training)})
        for alert, ranks in zip(result.alerts, result.alert_ranks, strict=False):
            rows.append({**alert.to_dict(), "type": "alert", **common, "mode": alert.mode,
                         **conventions, "ranks": list(ranks)})
        HistoryFile(self.path).append(rows)

    def write_classes(self, result: AnalysisResult, settings: dict[str, Any]) -> None:
        """The ``class`` rows of one analysis (``settings``: probe size and the edge-rule settings,
        :meth:`~svd_callback.monitor.class_stage.ClassStage.history_fields`)."""
        if self.path is None or result.class_report is None:
            return
        common = {**_common(result), **settings}
        HistoryFile(self.path).append([{**row, **common} for row in result.class_report.rows()])


def _common(result: AnalysisResult) -> dict[str, Any]:
    return {"epoch": result.epoch, "epochs_trained": result.epochs_trained,
            "step": result.step, "trigger": result.trigger}


def _rows_up_to(path: str, step: int) -> list[dict[str, Any]] | None:
    """Rows of the history at ``path`` with step <= ``step`` (None if the file is missing)."""
    if not Path(path).exists():
        return None
    return [row for row in read_history(path) if int(row.get("step", 0)) <= step]


def _rewrite(history: HistoryFile, rows: list[dict[str, Any]]) -> None:
    """Replace the file's content with ``rows`` atomically."""
    tmp = HistoryFile(history.path.with_name(history.path.name + ".tmp"))
    if tmp.path.exists():
        tmp.path.unlink()
    tmp.append(rows)
    tmp.path.replace(history.path)
