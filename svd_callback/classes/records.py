"""The class statistics as the alert engine reads them: records of mode :data:`CLASS_MODE`.

A small module on purpose: the class alert rules need the mode name and the record type, not
the analysis that computes the statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CLASS_MODE", "ClassRecord", "class_records"]

CLASS_MODE = "classes"
"""The ``mode`` of the class records given to the alert engine (beside ``unfold`` etc.)."""


@dataclass(frozen=True)
class ClassRecord:
    """One layer's class statistics in the shape the alert engine reads (``mode`` =
    :data:`CLASS_MODE`; per-class values under ``<stat>/<class>`` keys)."""

    name: str
    metrics: dict[str, float]
    mode: str = CLASS_MODE
    reason: str | None = None
    quality: str | None = None


def class_records(metrics: Mapping[str, Mapping[str, float]]) -> list[ClassRecord]:
    """:class:`ClassRecord` objects from :meth:`ClassReport.record_metrics` output."""
    return [ClassRecord(layer, dict(values)) for layer, values in metrics.items()]
