"""The layouts of ``SpectralMonitor``'s checkpointed state.

Version 2 (written now) holds one entry per part, each that part's own ``state_dict``::

    {"version": 2, "schedule": {...}, "runner": {...}, "publisher": {...}, "summaries": [...]}

Version 1 (written before) was one flat dict: ``analyses`` and ``last_step`` (the schedule),
``input_sizes``, ``training``, ``alert_engine``, ``classes``, ``motion`` (the runner's),
``spectra`` and ``figure_names`` (the heat-map store), ``history_path`` and ``run_id`` (the
history file), ``summaries``. :func:`upgrade` reads either into version 2; a version-1 state
has no cumulative alert counts (the runner then counts the alerts its engine kept, as the
callback did when that state was written).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["STATE_VERSION", "upgrade"]

STATE_VERSION = 2


def upgrade(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """``state`` in the layout of :data:`STATE_VERSION` (None: not a state of a known
    version)."""
    version = state.get("version") if isinstance(state, Mapping) else None
    if version == STATE_VERSION:
        return dict(state)
    if version == 1:
        return _from_version_1(state)
    return None


def _from_version_1(state: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "schedule": {"analyses": state["analyses"], "last_step": state["last_step"]},
        "runner": {
            "input_sizes": state["input_sizes"],
            "training": state.get("training", {}),
            "alert_engine": state["alert_engine"],
            "alert_totals": None,
            "classes": state.get("classes"),
            "motion": state.get("motion"),
        },
        "publisher": {
            "heatmaps": {"spectra": state["spectra"], "figure_names": state["figure_names"]},
            "history": {"history_path": state["history_path"], "run_id": state.get("run_id")},
        },
        "summaries": state["summaries"],
    }
