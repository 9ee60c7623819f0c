"""Bounded, checkpointable history of per-layer metrics and model-level aggregates.

One :class:`Snapshot` per analysis holds, for every (layer, mode), the metric values, the skip
reason, the quality label and the output normaliser (``normalized_by``) of its
:class:`~svd_callback.report.LayerReport` (spectra are not kept), plus the model-level
aggregates. Only the last ``max_len`` analyses are kept, stored
compactly (one shared key table per metric set and a float array per layer), and the history
serialises to plain Python types so that a Lightning checkpoint can carry it.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from svd_callback.spectra.modes import MODES

HISTORY_STATE_VERSION = 1
KNOWN_MODES = tuple(MODES)
"""Conv modes recognised inside flat summary keys such as ``alpha_mean/unfold``."""

_MAX_KEY_TABLES = 4096


def to_float(value: Any) -> float:
    """``float(value)``, or NaN when the value has no float reading (None, text, a tensor of
    several elements, ...)."""
    try:
        return float(value)
    except Exception:  # noqa: BLE001 - any unreadable value becomes NaN, never an error
        return math.nan


class LayerSnapshot:
    """Metrics of one (layer, mode) in one analysis."""

    __slots__ = ("name", "mode", "reason", "quality", "normalized_by", "matrix_shape", "_index",
                 "_values")

    def __init__(
        self,
        name: str,
        mode: str,
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
    """One analysis: its (epoch, step), per-(layer, mode) records and model-level aggregates.

    ``summary`` maps (aggregate name, mode or None) to its value.
    """

    __slots__ = ("epoch", "step", "layers", "summary")

    def __init__(
        self,
        epoch: int,
        step: int,
        layers: dict[tuple[str, str], LayerSnapshot],
        summary: dict[tuple[str, str | None], float],
    ) -> None:
        self.epoch = epoch
        self.step = step
        self.layers = layers
        self.summary = summary

    def get(self, layer: str, metric: str, mode: str) -> float | None:
        record = self.layers.get((layer, mode))
        return None if record is None else record.get(metric)

    def __repr__(self) -> str:
        return f"Snapshot(epoch={self.epoch}, step={self.step}, layers={len(self.layers)})"


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
        >>> h.append(1, 100, Report([record]))
        True
        >>> h.append(1, 100, Report())  # same (epoch, step): ignored
        False
        >>> h.series("fc", "alpha", "unfold")
        [(1, 100, 3.0)]
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
    ) -> bool:
        """Record one analysis; return False (and change nothing) when (epoch, step) is not
        later than the newest kept analysis.

        ``report`` is a :class:`~svd_callback.report.Report` (any iterable of records with
        ``name``, ``mode``, ``metrics``, ``reason``, ``quality``). ``summary`` is either flat
        (``{"alpha_mean": 3.1}``, ``{"alpha_mean/unfold": 3.1}``) or per mode, as
        :func:`svd_callback.analysis.summarize` returns it (``{"unfold": {"alpha_mean": 3.1}}``).
        Values without a float reading are stored as NaN.
        """
        epoch, step = int(epoch), int(step)
        if self._entries and (epoch, step) <= (self._entries[-1].epoch, self._entries[-1].step):
            return False
        layers: dict[tuple[str, str], LayerSnapshot] = {}
        for record in report:
            name, mode = str(record.name), str(record.mode)
            metrics = getattr(record, "metrics", None) or {}
            layers[(name, mode)] = self._layer(
                name,
                mode,
                {str(k): to_float(v) for k, v in metrics.items()},
                _optional_str(getattr(record, "reason", None)),
                _optional_str(getattr(record, "quality", None)),
                _optional_str(getattr(record, "normalized_by", None)),
                _shape(getattr(record, "matrix_shape", None)),
            )
        modes = {mode for _, mode in layers}
        self._entries.append(Snapshot(epoch, step, layers, _normalise_summary(summary, modes)))
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._key_tables.clear()

    def _layer(
        self,
        name: str,
        mode: str,
        metrics: dict[str, float],
        reason: str | None,
        quality: str | None,
        normalized_by: str | None = None,
        matrix_shape: tuple[int, int] | None = None,
    ) -> LayerSnapshot:
        index = self._key_table(tuple(metrics))
        return LayerSnapshot(name, mode, index, array("d", metrics.values()), reason, quality,
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
        mode: str,
        n: int,
        *,
        finite: bool = True,
        min_epoch: int | None = None,
    ) -> list[float]:
        """The last ``n`` values (oldest first) of one layer's metric, only finite ones by
        default, only from analyses at ``epoch >= min_epoch`` when given. Walks back from the
        newest analysis and stops as soon as ``n`` values are found."""
        out: list[float] = []
        for e in reversed(self._entries):
            if len(out) >= n or (min_epoch is not None and e.epoch < min_epoch):
                break
            value = e.get(layer, metric, mode)
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

        Per analysis: ``layers`` = [name, mode, reason, quality, key-set index, normalized_by]
        rows and one flat ``values`` list holding every row's metric values in key-set order
        (rows of five, without ``normalized_by``, are read as None)."""
        key_sets: dict[tuple[str, ...], int] = {}
        entries = []
        for e in self._entries:
            rows, values = [], array("d")
            for rec in e.layers.values():
                keys = tuple(rec._index)
                index = key_sets.setdefault(keys, len(key_sets))
                rows.append([rec.name, rec.mode, rec.reason, rec.quality, index,
                             rec.normalized_by])
                values.extend(rec._values)
            entries.append(
                {
                    "epoch": e.epoch,
                    "step": e.step,
                    "layers": rows,
                    "values": values.tolist(),
                    "summary": [[n, m, v] for (n, m), v in e.summary.items()],
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
        ``max_len``).

        Raises:
            ValueError: if ``state`` is not a history state of a known version.
        """
        version = state.get("version") if isinstance(state, Mapping) else None
        if version != HISTORY_STATE_VERSION:
            raise ValueError(
                f"not a MetricHistory state of version {HISTORY_STATE_VERSION} (got version "
                f"{version!r})"
            )
        self.clear()
        tables = [self._key_table(tuple(k)) for k in state["key_sets"]]
        for item in state["entries"]:
            values = array("d", item["values"])
            layers, offset = {}, 0
            for name, mode, reason, quality, k, *rest in item["layers"]:
                n = len(tables[k])
                chunk = values[offset : offset + n]
                layers[(name, mode)] = LayerSnapshot(name, mode, tables[k], chunk, reason, quality,
                                                     rest[0] if rest else None)
                offset += n
            if offset != len(values):
                raise ValueError(
                    f"corrupt MetricHistory state: {len(values)} values for {offset} metrics "
                    f"at epoch {item['epoch']}"
                )
            summary = {(n, m): float(v) for n, m, v in item["summary"]}
            self._entries.append(Snapshot(int(item["epoch"]), int(item["step"]), layers, summary))


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _normalise_summary(
    summary: Mapping[str, Any] | None, modes: set[str]
) -> dict[tuple[str, str | None], float]:
    """Map a flat or per-mode summary to {(name, mode or None): value}."""
    out: dict[tuple[str, str | None], float] = {}
    if not summary:
        return out
    known = set(KNOWN_MODES) | modes
    for key, value in summary.items():
        key = str(key)
        if isinstance(value, Mapping):  # per mode: {mode: {name: value}}
            for name, inner in value.items():
                out[(str(name), key)] = to_float(inner)
            continue
        name, mode = key, None
        for sep in ("/", ".", ":"):
            head, _, tail = key.rpartition(sep)
            if head and tail in known:
                name, mode = head, tail
                break
            first, _, rest = key.partition(sep)
            if rest and first in known:
                name, mode = rest, first
                break
        out[(name, mode)] = to_float(value)
    return out


def _shape(value: Any) -> tuple[int, int] | None:
    """A record's ``matrix_shape`` as a pair of ints (None when absent or malformed)."""
    try:
        rows, cols = (int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return rows, cols
