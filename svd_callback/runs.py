"""Read the spectral records of finished runs back, for side-by-side comparison.

A run directory is searched for ``spectral_history.jsonl`` (every record the callback wrote) and,
failing that, for TensorBoard event files whose tags follow the fixed patterns
``spectral/<metric>[.<mode>]/<layer>`` and ``spectral_summary/<metric>[.<mode>]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

HISTORY_FILE = "spectral_history.jsonl"
COLUMNS = ["epoch", "step", "layer", "mode", "metric", "value"]
SUMMARY_LAYER = "<model>"
"""The ``layer`` of model-level aggregates (``spectral_summary/*``)."""


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
    """The first conv mode of the run (TensorBoard tags leave it unnamed: None there)."""

    def series(self, metric: str, layer: str = SUMMARY_LAYER, mode: str | None = None) -> pd.Series:
        """Values of ``metric`` for ``layer`` and ``mode`` (default: the primary mode) indexed by
        epoch (the last value per epoch)."""
        frame = self.records
        base = (frame["metric"] == metric) & (frame["layer"] == layer)
        wanted = mode if mode is not None else self.primary_mode
        mask = base & (frame["mode"] == wanted if wanted is not None else frame["mode"].isna())
        if mode is not None and not mask.any() and self.primary_mode is None:
            mask = base & frame["mode"].isna()  # TensorBoard: the primary mode's tags are unnamed
        picked = frame[mask].sort_values(["epoch", "step"])
        return picked.groupby("epoch")["value"].last()


def read_run(path: str | Path) -> Run:
    """Read a run from its log directory (or any parent of it)."""
    root = Path(path)
    if not root.exists():
        raise RunReadError(f"no such directory: {root}")
    if not root.is_dir():
        raise RunReadError(f"{root} is not a directory")
    histories = sorted(root.rglob(HISTORY_FILE))
    if histories:
        return _from_history(root, histories[-1])
    events = sorted(root.rglob("events.out.tfevents.*"))
    if events:
        return _from_events(root, events)
    raise RunReadError(f"{root} holds neither {HISTORY_FILE} nor TensorBoard event files")


def _from_history(root: Path, history: Path) -> Run:
    rows, alerts = [], []
    with history.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise RunReadError(f"{history}:{number} is not valid JSON") from None
            kind = item.get("type", "layer")
            if kind == "alert":
                alerts.append(item)
                continue
            if kind == "training":  # the trainer's own scalars, seen by the alert rules
                continue
            layer = item.get("layer", SUMMARY_LAYER) if kind != "summary" else SUMMARY_LAYER
            for metric, value in (item.get("metrics") or {}).items():
                if isinstance(value, (int, float)):
                    rows.append((item.get("epoch"), item.get("step"), layer, item.get("mode"),
                                 metric, float(value)))
    records = pd.DataFrame(rows, columns=COLUMNS)
    if records.empty:
        raise RunReadError(f"{history} holds no spectral records")
    primary = records["mode"].dropna()
    return Run(root.name or str(root), root, str(history), records, alerts,
               primary_mode=str(primary.iloc[0]) if len(primary) else None)


def _from_events(root: Path, events: list[Path]) -> Run:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows, alerts = [], []
    for event_file in events:
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        epoch_at = completed_epochs(acc.Scalars("epoch")) if "epoch" in tags else {}
        for tag in tags:
            parsed = parse_tag(tag)
            if parsed is None:
                continue
            layer, metric, mode = parsed
            for event in acc.Scalars(tag):
                rows.append((epoch_at.get(event.step), event.step, layer, mode, metric,
                             float(event.value)))
        if "alerts/count" in tags:
            alerts.extend({"step": e.step, "count": e.value} for e in acc.Scalars("alerts/count")
                          if e.value > 0)
    records = pd.DataFrame(rows, columns=COLUMNS)
    if records.empty:
        raise RunReadError(f"{root} has TensorBoard events but no spectral/ tags "
                           "(was the run logged with SpectralMonitor?)")
    return Run(root.name or str(root), root, "tensorboard", records, alerts)


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


def parse_tag(tag: str) -> tuple[str, str, str | None] | None:
    """``spectral/alpha.operator/conv1`` -> ("conv1", "alpha", "operator");
    ``spectral_summary/alpha_mean`` -> ("<model>", "alpha_mean", None); other tags -> None.
    A missing ``.mode`` suffix means the run's primary mode."""
    head, _, rest = tag.partition("/")
    if head == "spectral":
        metric, _, layer = rest.partition("/")
        if not layer:
            return None
    elif head == "spectral_summary":
        metric, layer = rest, SUMMARY_LAYER
    else:
        return None
    metric, _, mode = metric.partition(".")
    return layer, metric, mode or None
