"""Bounded, checkpointable history of what each analysis gave the alert rules.

One :class:`Snapshot` per analysis holds four typed parts, each in its own field:

- ``layers``: for every (layer, mode), the metric values, the skip reason, the quality label,
  the output normaliser (``normalized_by``) and the analysed matrix's shape of its
  :class:`~svd_callback.report.LayerReport` (spectra are not kept);
- ``summary``: the model-level aggregates by (name, mode), as
  :func:`svd_callback.analysis.summarize` gives them per mode (mode None for an aggregate given
  without one);
- ``training``: the trainer's own logged scalars (``val_loss``, ``train_loss``, ...);
- ``classes``: the class statistics of each layer (per-class values under ``<stat>/<class>``).

Only the last ``max_len`` analyses are kept, stored compactly (one shared key table per metric
set and a float array per record), and the history serialises to plain Python types so that a
Lightning checkpoint can carry it.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

HISTORY_STATE_VERSION = 2
LEGACY_TRAINING_MODE = "training"
LEGACY_CLASS_MODE = "classes"
"""The pseudo-modes under which version-1 states kept the trainer's scalars (in the summary)
and the class statistics (as layer records); :meth:`MetricHistory.load_state_dict` moves them
to their own fields."""

_MAX_KEY_TABLES = 4096


def to_float(value: Any) -> float:
    """``float(value)``, or NaN when the value has no float reading (None, text, a tensor of
    several elements, ...)."""
    try:
        return float(value)
    except Exception:  # noqa: BLE001 - any unreadable value becomes NaN, never an error
        return math.nan


class LayerSnapshot:
    """The values of one record in one analysis: a (layer, mode) of the spectral analysis, or
    a layer's class statistics (``mode`` None)."""

    __slots__ = ("name", "mode", "reason", "quality", "normalized_by", "matrix_shape", "_index",
                 "_values")

    def __init__(
        self,
        name: str,
        mode: str | None,
        index: dict[str, int],
        values: array,
        reason: str | None = None,
        quality: str | None = None,
        normalized_by: str | None = None,
        matrix_shape: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self.mode = mode
        self.reason = reason
        self.quality = quality
        self.normalized_by = normalized_by
        self.matrix_shape = matrix_shape  # (N, M) of one analysed matrix
        self._index = index
        self._values = values

    @property
    def skipped(self) -> bool:
        return self.reason is not None

    @property
    def metrics(self) -> dict[str, float]:
        return {key: self._values[i] for key, i in self._index.items()}

    def get(self, metric: str) -> float | None:
        """The metric's value (possibly NaN), or None when the analysis did not report it."""
        i = self._index.get(metric)
        return None if i is None else self._values[i]

    def __repr__(self) -> str:
        return (
            f"LayerSnapshot({self.name!r}, {self.mode!r}, reason={self.reason!r}, "
            f"metrics={self.metrics})"
        )


class Snapshot:
    """One analysis: its (epoch, step) and the four typed parts of the module docstring."""

    __slots__ = ("epoch", "step", "layers", "summary", "training", "classes")

    def __init__(
        self,
        epoch: int,
        step: int,
        layers: dict[tuple[str, str], LayerSnapshot],
        summary: dict[tuple[str, str | None], float],
        training: dict[str, float] | None = None,
        classes: dict[str, LayerSnapshot] | None = None,
    ) -> None:
        self.epoch = epoch
        self.step = step
        self.layers = layers
        self.summary = summary
        self.training = training or {}
        self.classes = classes or {}

    def get(self, layer: str, metric: str, mode: str) -> float | None:
        record = self.layers.get((layer, mode))
        return None if record is None else record.get(metric)

    def class_value(self, layer: str, stat: str) -> float | None:
        record = self.classes.get(layer)
        return None if record is None else record.get(stat)

    def __repr__(self) -> str:
        return (f"Snapshot(epoch={self.epoch}, step={self.step}, layers={len(self.layers)}, "
                f"training={sorted(self.training)}, classes={len(self.classes)})")


class MetricHistory:
    """The last ``max_len`` analyses, oldest first.

    Appends only move forward in time: an analysis whose (epoch, step) is not later than the
    newest kept one is ignored, so a resumed run that re-analyses an epoch already in the
    restored history adds nothing twice.

    Args:
        max_len: number of analyses kept (older ones are dropped first).

    Raises:
        ValueError: if ``max_len`` is not a positive integer.

    Example:
        >>> from svd_callback.report import LayerReport, Report
        >>> h = MetricHistory(max_len=10)
        >>> record = LayerReport("fc", "linear", "unfold", metrics={"alpha": 3.0})
        >>> h.append(1, 100, Report([record]), training={"val_loss": 0.5})
        True
        >>> h.append(1, 100, Report())  # same (epoch, step): ignored
        False
        >>> h.series("fc", "alpha", "unfold"), h.latest.training
        ([(1, 100, 3.0)], {'val_loss': 0.5})
    """

    def __init__(self, max_len: int = 1000) -> None:
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
        self.max_len = max_len
        self._entries: deque[Snapshot] = deque(maxlen=max_len)
        self._key_tables: dict[tuple[str, ...], dict[str, int]] = {}

    # ------------------------------------------------------------------ writing
    def append(
        self,
        epoch: int,
        step: int,
        report: Iterable[Any],
        summary: Mapping[str, Any] | None = None,
        *,
        training: Mapping[str, Any] | None = None,
        classes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> bool:
        """Record one analysis; return False (and change nothing) when (epoch, step) is not
        later than the newest kept analysis.

        Args:
            report: a :class:`~svd_callback.report.Report` (any iterable of records with
                ``name``, ``mode``, ``metrics``, ``reason``, ``quality``).
            summary: per mode, as :func:`svd_callback.analysis.summarize` returns it
                (``{"unfold": {"alpha_mean": 3.1}}``), or flat (``{"alpha_mean": 3.1}``: mode
                None). Keys are taken as they are, never parsed.
            training: the trainer's own scalars, ``{"val_loss": 0.4}``.
            classes: the class statistics per layer, ``{"features.0": {"jaccard_mean": 0.3}}``.

        Values without a float reading are stored as NaN.
        """
        epoch, step = int(epoch), int(step)
        if self._entries and (epoch, step) <= (self._entries[-1].epoch, self._entries[-1].step):
            return False
        layers: dict[tuple[str, str], LayerSnapshot] = {}
        for record in report:
            name, mode = str(record.name), str(record.mode)
            metrics = getattr(record, "metrics", None) or {}
            layers[(name, mode)] = self._record(
                name,
                mode,
                metrics,
                _optional_str(getattr(record, "reason", None)),
                _optional_str(getattr(record, "quality", None)),
                _optional_str(getattr(record, "normalized_by", None)),
                _shape(getattr(record, "matrix_shape", None)),
            )
        class_records = {str(layer): self._record(str(layer), None, values)
                         for layer, values in (classes or {}).items()}
        self._entries.append(Snapshot(
            epoch, step, layers, _summary(summary),
            {str(k): to_float(v) for k, v in (training or {}).items()}, class_records,
        ))
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._key_tables.clear()

    def _record(
        self,
        name: str,
        mode: str | None,
        metrics: Mapping[str, Any],
        reason: str | None = None,
        quality: str | None = None,
        normalized_by: str | None = None,
        matrix_shape: tuple[int, int] | None = None,
    ) -> LayerSnapshot:
        values = {str(k): to_float(v) for k, v in metrics.items()}
        index = self._key_table(tuple(values))
        return LayerSnapshot(name, mode, index, array("d", values.values()), reason, quality,
                             normalized_by, matrix_shape)

    def _key_table(self, keys: tuple[str, ...]) -> dict[str, int]:
        """The shared metric -> position table of one key set."""
        index = self._key_tables.get(keys)
        if index is None:
            if len(self._key_tables) >= _MAX_KEY_TABLES:
                self._key_tables.clear()  # kept snapshots hold their own references
            index = self._key_tables[keys] = {key: i for i, key in enumerate(keys)}
        return index

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Snapshot]:
        return iter(self._entries)

    def __reversed__(self) -> Iterator[Snapshot]:
        return reversed(self._entries)

    def __getitem__(self, i: int) -> Snapshot:
        return self._entries[i]

    @property
    def latest(self) -> Snapshot | None:
        return self._entries[-1] if self._entries else None

    def modes(self) -> list[str]:
        """Modes seen in the kept analyses, in order of first appearance."""
        return list(dict.fromkeys(m for e in self._entries for _, m in e.layers))

    def layer_names(self, mode: str | None = None) -> list[str]:
        """Layers seen in the kept analyses (optionally of one mode), in order of appearance."""
        return list(
            dict.fromkeys(
                n for e in self._entries for n, m in e.layers if mode is None or m == mode
            )
        )

    def series(
        self, layer: str, metric: str, mode: str | None = None
    ) -> list[tuple[int, int, float]]:
        """(epoch, step, value) of one layer's metric over the kept analyses (NaN included;
        analyses where the layer or the metric is absent are left out).

        With ``mode=None`` the layer must have been analysed in a single mode.

        Raises:
            ValueError: ``mode=None`` and the layer appears in several modes.
        """
        mode = self._resolve_mode(layer, mode)
        out = []
        for e in self._entries:
            value = e.get(layer, metric, mode)
            if value is not None:
                out.append((e.epoch, e.step, value))
        return out

    def last_values(
        self,
        layer: str,
        metric: str,
        mode: str | None,
        n: int,
        *,
        finite: bool = True,
        min_epoch: int | None = None,
    ) -> list[float]:
        """The last ``n`` values (oldest first) of one layer's metric, only finite ones by
        default, only from analyses at ``epoch >= min_epoch`` when given. Walks back from the
        newest analysis and stops as soon as ``n`` values are found. ``mode=None`` reads the
        layer's class statistics (``metric`` a class statistic)."""
        out: list[float] = []
        for e in reversed(self._entries):
            if len(out) >= n or (min_epoch is not None and e.epoch < min_epoch):
                break
            value = e.class_value(layer, metric) if mode is None else e.get(layer, metric, mode)
            if value is not None and (not finite or math.isfinite(value)):
                out.append(value)
        return out[::-1]

    def summary_series(self, name: str, mode: str | None = None) -> list[tuple[int, int, float]]:
        """(epoch, step, value) of one model-level aggregate over the kept analyses.

        ``mode=None`` selects the aggregate stored without a mode, or its only mode.

        Raises:
            ValueError: ``mode=None`` and the aggregate exists for several modes.
        """
        if mode is None:
            modes = list(dict.fromkeys(m for e in self._entries for n, m in e.summary if n == name))
            if len(modes) > 1:
                raise ValueError(
                    f"summary {name!r} exists for several modes {modes}; pass mode=..."
                )
            mode = modes[0] if modes else None
        key = (name, mode)
        return [(e.epoch, e.step, e.summary[key]) for e in self._entries if key in e.summary]

    def training_series(self, name: str) -> list[tuple[int, int, float]]:
        """(epoch, step, value) of one of the trainer's scalars over the kept analyses."""
        return [(e.epoch, e.step, e.training[name]) for e in self._entries if name in e.training]

    def _resolve_mode(self, layer: str, mode: str | None) -> str:
        if mode is not None:
            return mode
        modes = list(dict.fromkeys(m for e in self._entries for n, m in e.layers if n == layer))
        if len(modes) > 1:
            raise ValueError(
                f"layer {layer!r} was analysed in several modes {modes}; pass mode=..."
            )
        return modes[0] if modes else ""

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Plain Python types only (lists, dicts, str, int, float, None).

        Per analysis: ``layers`` = [name, mode, reason, quality, key-set index, normalized_by,
        matrix_shape] rows and ``classes`` = [layer, key-set index] rows, each with one flat
        list of values in key-set order (``values``, ``class_values``); ``summary`` =
        [name, mode, value] rows; ``training`` = {name: value}."""
        key_sets: dict[tuple[str, ...], int] = {}
        entries = []
        for e in self._entries:
            rows, values = [], array("d")
            for rec in e.layers.values():
                index = key_sets.setdefault(tuple(rec._index), len(key_sets))
                rows.append([rec.name, rec.mode, rec.reason, rec.quality, index,
                             rec.normalized_by,
                             None if rec.matrix_shape is None else list(rec.matrix_shape)])
                values.extend(rec._values)
            class_rows, class_values = [], array("d")
            for rec in e.classes.values():
                class_rows.append([rec.name, key_sets.setdefault(tuple(rec._index),
                                                                 len(key_sets))])
                class_values.extend(rec._values)
            entries.append(
                {
                    "epoch": e.epoch,
                    "step": e.step,
                    "layers": rows,
                    "values": values.tolist(),
                    "summary": [[n, m, v] for (n, m), v in e.summary.items()],
                    "training": dict(e.training),
                    "classes": class_rows,
                    "class_values": class_values.tolist(),
                }
            )
        return {
            "version": HISTORY_STATE_VERSION,
            "max_len": self.max_len,
            "key_sets": [list(k) for k in key_sets],
            "entries": entries,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the kept analyses with those of ``state`` (keeping this history's
        ``max_len``). A version-1 state (written before the four parts had fields of their own)
        loads too: its ``"training"`` summary mode becomes ``training`` and its ``"classes"``
        layer records ``classes``.

        Raises:
            ValueError: if ``state`` is not a history state of a known version, or its values
                do not match its key sets.
        """
        version = state.get("version") if isinstance(state, Mapping) else None
        if version not in (1, HISTORY_STATE_VERSION):
            raise ValueError(
                f"not a MetricHistory state of version 1 or {HISTORY_STATE_VERSION} (got "
                f"version {version!r})"
            )
        self.clear()
        tables = [self._key_table(tuple(k)) for k in state["key_sets"]]
        for item in state["entries"]:
            records = _unpack(tables, item["layers"], array("d", item["values"]), item["epoch"])
            layers = {(r.name, r.mode): r for r in records if r.mode != LEGACY_CLASS_MODE}
            classes = {r.name: r for r in records if r.mode == LEGACY_CLASS_MODE}
            class_rows = [[name, None, None, None, k] for name, k in item.get("classes", [])]
            for record in _unpack(tables, class_rows, array("d", item.get("class_values", [])),
                                  item["epoch"]):
                classes[record.name] = record
            for record in classes.values():
                record.mode = None
            summary = {(n, m): float(v) for n, m, v in item["summary"]
                       if m != LEGACY_TRAINING_MODE}
            training = {n: float(v) for n, m, v in item["summary"] if m == LEGACY_TRAINING_MODE}
            training.update({str(k): float(v) for k, v in item.get("training", {}).items()})
            self._entries.append(Snapshot(int(item["epoch"]), int(item["step"]), layers,
                                          summary, training, classes))


def _unpack(tables: list[dict[str, int]], rows: list[list], values: array,
            epoch: Any) -> list[LayerSnapshot]:
    """The records of state rows [name, mode, reason, quality, key-set index,
    (normalized_by), (matrix_shape)] over one flat ``values`` array.

    Raises:
        ValueError: the values do not fill the rows' key sets exactly.
    """
    out, offset = [], 0
    for name, mode, reason, quality, k, *rest in rows:
        n = len(tables[k])
        shape = _shape(rest[1]) if len(rest) > 1 else None
        out.append(LayerSnapshot(name, mode, tables[k], values[offset:offset + n], reason,
                                 quality, rest[0] if rest else None, shape))
        offset += n
    if offset != len(values):
        raise ValueError(f"corrupt MetricHistory state: {len(values)} values for {offset} "
                         f"metrics at epoch {epoch}")
    return out


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _summary(summary: Mapping[str, Any] | None) -> dict[tuple[str, str | None], float]:
    """{(name, mode or None): value} from a per-mode ({mode: {name: value}}) or flat
    ({name: value}) summary; keys are not parsed."""
    out: dict[tuple[str, str | None], float] = {}
    for key, value in (summary or {}).items():
        if isinstance(value, Mapping):
            for name, inner in value.items():
                out[(str(name), str(key))] = to_float(inner)
        else:
            out[(str(key), None)] = to_float(value)
    return out


def _shape(value: Any) -> tuple[int, int] | None:
    """A record's ``matrix_shape`` as a pair of ints (None when absent or malformed)."""
    try:
        rows, cols = (int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return rows, cols
