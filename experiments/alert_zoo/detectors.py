"""What the zoo scores: the outcome of a run (broken or not, and from which epoch) and the
loss-based baseline detectors, all read from the per-epoch records of
:class:`~experiments.common.EpochRecorder` (``rows[k]``: after k epochs; k = 0 the initial
weights, which have no training loss)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PLATEAU_POINTS = 0.005
"""Best validation accuracy must improve by more than this (0.5 points) to count as progress."""
BROKEN_MARGIN = 0.03
"""An injected failure is *broken* when its best validation accuracy is at least this far (3
points) below the worst healthy run of the same pair and seed, or its loss is not finite."""
CHANCE = 0.1
"""Chance accuracy of the ten-class pairs."""


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(value)


def first_non_finite(rows: Sequence[dict[str, Any]]) -> int | None:
    """The first epoch whose training or validation loss is not finite (None: all finite)."""
    for row in rows[1:]:
        if not (_finite(row["train_loss"]) and _finite(row["val_loss"])):
            return int(row["epoch"])
    return None


def best_accuracy(rows: Sequence[dict[str, Any]]) -> float:
    """Best validation accuracy over the trained epochs (k >= 1); NaN counts as 0."""
    values = [row["val_acc"] if _finite(row["val_acc"]) else 0.0 for row in rows[1:]]
    return max(values, default=0.0)


def decided_epoch(rows: Sequence[dict[str, Any]]) -> int:
    """The epoch from which a run's outcome is decided: the first non-finite loss, else the first
    epoch k >= 1 after which the best validation accuracy never improves by more than
    :data:`PLATEAU_POINTS` (the last epoch when it still improves at the end)."""
    nan_epoch = first_non_finite(rows)
    if nan_epoch is not None:
        return nan_epoch
    accs = [row["val_acc"] if _finite(row["val_acc"]) else 0.0 for row in rows]
    last = int(rows[-1]["epoch"])
    for k in range(1, len(accs)):
        if max(accs[k + 1:], default=-1.0) <= max(accs[1:k + 1]) + PLATEAU_POINTS:
            return int(rows[k]["epoch"])
    return last


def early_stopping_epoch(rows: Sequence[dict[str, Any]], patience: int = 3) -> int | None:
    """The epoch at which Lightning's ``EarlyStopping(monitor="val_loss", patience=3)`` (mode
    min, ``min_delta=0``, ``check_finite=True``) stops: a non-finite loss at once, else when the
    loss has not improved on its best for ``patience`` validations. None: it does not stop."""
    best, wait = math.inf, 0
    for row in rows[1:]:
        value = row["val_loss"]
        if not _finite(value):
            return int(row["epoch"])
        if value < best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return int(row["epoch"])
    return None


def no_progress_epoch(rows: Sequence[dict[str, Any]], window: int = 3,
                      min_drop: float = 0.01, chance: float = CHANCE,
                      margin: float = 0.05) -> int | None:
    """The first epoch k >= ``window`` at which the training loss fell by less than
    ``min_drop`` (1%) over the last ``window`` epochs, or the validation accuracy is at most
    chance + ``margin`` (5 points). The epoch-0 training loss is unknown, so the loss test starts
    at k = window + 1. None: never."""
    for index in range(window, len(rows)):
        row = rows[index]
        k = int(row["epoch"])
        acc = row["val_acc"]
        if _finite(acc) and acc <= chance + margin:
            return k
        if index - window >= 1:
            now, before = row["train_loss"], rows[index - window]["train_loss"]
            if _finite(now) and _finite(before) and now > (1.0 - min_drop) * before:
                return k
    return None


BASELINES = {
    "EarlyStopping(val_loss, patience 3)": early_stopping_epoch,
    "no progress": no_progress_epoch,
    "non-finite loss": first_non_finite,
}


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927), 95% for z = 1.96;
    (nan, nan) when ``total`` is 0."""
    if total == 0:
        return math.nan, math.nan
    p = successes / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
