"""Built-in model-level rule: the mean alpha over layers as an early-stopping signal."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from svd_callback.alerts.base import Alert, Hysteresis, Rule, fmt, when
from svd_callback.alerts.history import MetricHistory, Snapshot
from svd_callback.alerts.layer_rules import alpha_error, confidence_margin


class MeanAlphaTrend(Rule):
    """Model-level aggregate (default ``alpha_mean``) below ``threshold`` for ``patience``
    consecutive analyses, and optionally falling faster than ``slope_below`` per epoch.

    Mean alpha falling below 2 has been proposed as an early-stopping signal (Martin & Mahoney;
    experimental; docs/methods.md#alert-rules). Alpha is not monotone in quality (one run went
    28.9 -> 4.2, then rose to 5.2 while benchmarks still improved), hence the patience and the
    default ``"log"`` action. Each mode's aggregate is watched on its own.

    The level condition is ``mean + confidence * se < threshold``, with se the standard error
    of the mean of the layers' fitted alphas, sqrt(sum sigma_l^2) / L (sigma_l = (alpha_l - 1) /
    sqrt(n_tail), Clauset et al. 2009); aggregates without per-layer ``<metric>_sigma`` use 0.

    The trend is the least-squares slope of the aggregate against the epoch over the last
    ``slope_window`` finite values; it fires once when the slope drops below ``slope_below``
    (e.g. ``-0.5``: alpha losing more than half a unit per epoch) and re-arms when it recovers.

    Args:
        summary: aggregate name (``alpha_mean``, ``alpha_weighted_mean``, ...).
        threshold: level below which the condition holds.
        patience: consecutive analyses the level condition must hold before the alert.
        slope_below: slope limit per epoch (None: no trend alert).
        slope_window: number of analyses in the slope fit (>= 2).
        confidence: standard errors by which the mean must clear ``threshold`` (0: plain level).
        min_epoch: first epoch considered (default 1: the fall from the random-init alpha,
            e.g. 16 -> 4 within the first epoch, is expected and would trip the trend).
        min_eigs: when > 0, the level is not the logged aggregate but the mean of the fitted
            ``<metric>`` (finite, > 1) over the layers of at least ``min_eigs`` eigenvalues
            (``matrix_rank + rank_loss``; a record without them is judged, as in
            :class:`~svd_callback.alerts.AlphaBelow`), named ``<summary>[>=<min_eigs> eigs]``
            in alerts; no evidence when no layer qualifies. Needs a ``<metric>_mean`` aggregate.
        **kwargs: ``name``, ``action``, ``modes`` (see :class:`Rule`).

    Raises:
        ValueError: ``slope_window < 2``.
    """

    def __init__(
        self,
        summary: str = "alpha_mean",
        threshold: float = 2.0,
        patience: int = 2,
        *,
        slope_below: float | None = None,
        slope_window: int = 5,
        min_epoch: int = 1,
        confidence: float = 2.0,
        min_eigs: int = 0,
        **kwargs: Any,
    ) -> None:
        if isinstance(slope_window, bool) or not isinstance(slope_window, int) or slope_window < 2:
            raise ValueError(f"slope_window must be an integer >= 2, got {slope_window!r}")
        super().__init__(min_epoch=min_epoch, **kwargs)
        self.summary = summary
        self.threshold = float(threshold)
        self.patience = patience
        self.slope_below = None if slope_below is None else float(slope_below)
        self.slope_window = slope_window
        self.confidence = float(confidence)
        self.min_eigs = int(min_eigs)
        self._level = Hysteresis(patience)
        self._trend = Hysteresis(1)

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch:
            return []
        alerts = []
        for (name, mode), value in snap.summary.items():
            if name != self.summary or not self.selects(None, mode):
                continue
            value = self._value(snap, mode)
            if value is None:
                continue
            name = self._label
            where = "model" + (f" [{mode}]" if mode else "")
            error = self._standard_error(snap, mode)
            if self._level.update((mode,), value + self.confidence * error < self.threshold):
                values = self._recent(history, mode, self.patience)
                streak = ""
                if self.patience > 1:
                    listed = ", ".join(fmt(v) for _, v in values)
                    streak = f" for {self.patience} consecutive analyses ({listed})"
                alerts.append(
                    self.make_alert(
                        mode=mode,
                        metric=name,
                        value=value,
                        values=tuple(v for _, v in values),
                        threshold=self.threshold,
                        epoch=snap.epoch,
                        step=snap.step,
                        message=(
                            f"{self.name}: {where} {name} = {fmt(value)} < {fmt(self.threshold)}"
                            f"{confidence_margin(self.confidence, error)}{streak}"
                            f"{when(snap.epoch, snap.step)} (proposed early-stopping signal: "
                            f"over-training)"
                        ),
                    )
                )
            if self.slope_below is None:
                continue
            points = self._recent(history, mode, self.slope_window)
            slope = _slope(points) if len(points) == self.slope_window else None
            if self._trend.update((mode,), None if slope is None else slope < self.slope_below):
                alerts.append(
                    self.make_alert(
                        mode=mode,
                        metric=f"{name}_slope",
                        value=slope,
                        values=tuple(v for _, v in points),
                        threshold=self.slope_below,
                        epoch=snap.epoch,
                        step=snap.step,
                        message=(
                            f"{self.name}: {where} {name} falling {fmt(slope)} per epoch over "
                            f"the last {self.slope_window} analyses (limit "
                            f"{fmt(self.slope_below)}){when(snap.epoch, snap.step)}"
                        ),
                    )
                )
        return alerts

    @property
    def _label(self) -> str:
        return self.summary + (f"[>={self.min_eigs} eigs]" if self.min_eigs > 0 else "")

    def _judged(self, snap: Snapshot, mode: str | None) -> list[tuple[str, str, float]]:
        """(layer, mode, value) of the layers (of ``mode``) entering the level: finite fitted
        values, and with ``min_eigs`` only valid fits (> 1) of layers that large."""
        metric = self.summary.removesuffix("_mean")
        out = []
        for (layer, layer_mode), record in snap.layers.items():
            if mode is not None and layer_mode != mode:
                continue
            value = record.get(metric)
            if value is None or not math.isfinite(value):
                continue
            if self.min_eigs > 0:
                count = eigenvalue_count_at(snap, layer, layer_mode)
                if value <= 1 or (count is not None and count < self.min_eigs):
                    continue
            out.append((layer, layer_mode, value))
        return out

    def _value(self, snap: Snapshot, mode: str | None) -> float | None:
        """The level: the logged aggregate, or with ``min_eigs`` the mean over large layers."""
        if self.min_eigs <= 0 or not self.summary.endswith("_mean"):
            value = snap.summary.get((self.summary, mode))
            return value if value is not None and math.isfinite(value) else None
        judged = self._judged(snap, mode)
        return sum(v for _, _, v in judged) / len(judged) if judged else None

    def _standard_error(self, snap: Snapshot, mode: str | None) -> float:
        """sqrt(sum sigma_l^2) / L over the layers (of ``mode``) entering the level."""
        if not self.summary.endswith("_mean"):
            return 0.0
        metric = self.summary.removesuffix("_mean")
        judged = self._judged(snap, mode)
        variance = sum(alpha_error(snap, layer, m, metric) ** 2 for layer, m, _ in judged)
        return math.sqrt(variance) / len(judged) if judged else 0.0

    def _recent(self, history: MetricHistory, mode: str | None, n: int) -> list[tuple[int, float]]:
        """The last ``n`` finite (epoch, value) points of the aggregate, oldest first."""
        out: list[tuple[int, float]] = []
        for e in reversed(history):
            if len(out) >= n or e.epoch < self.min_epoch:
                break
            value = self._value(e, mode)
            if value is not None:
                out.append((e.epoch, value))
        return out[::-1]

    def state_dict(self) -> dict[str, Any]:
        return {"level": self._level.state_dict(), "trend": self._trend.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._level.load_state_dict(state.get("level", []))
        self._trend.load_state_dict(state.get("trend", []))


def eigenvalue_count_at(snap: Snapshot, layer: str, mode: str) -> float | None:
    """``matrix_rank + rank_loss`` of one record of ``snap`` (None when not reported)."""
    rank, loss = snap.get(layer, "matrix_rank", mode), snap.get(layer, "rank_loss", mode)
    if rank is None or loss is None or not math.isfinite(rank + loss):
        return None
    return rank + loss


def _slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope dy/dx; None when all x are equal."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope if math.isfinite(slope) else None


TRAINING = "training"
"""Pseudo-mode under which the callback records the trainer's own logged scalars
(``trainer.callback_metrics``: ``val_loss``, ``train_loss``, ...) in the alert history."""


class GeneralizationGap(Rule):
    """Over-fitting: the validation loss exceeds the training loss by more than ``threshold``
    for ``patience`` consecutive analyses.

    Reads the trainer's logged scalars (``val`` and ``train``, recorded under the mode
    :data:`TRAINING`), not the spectra: no spectral rule flagged the zoo's nets memorising 100
    or 300 images, while this gap opened at epochs 3-11, before their outcome was decided
    (``experiments/alert_zoo``). ``train``
    should be an epoch mean (``self.log(..., on_epoch=True)``); a last-batch value is noisy.
    The threshold is in the loss's own units (nats for cross-entropy). Silent when either
    scalar is missing (no validation data, other names).

    Args:
        threshold: largest tolerated ``val - train``.
        patience: consecutive analyses the gap must exceed it.
        val, train: names of the logged scalars.
        **kwargs: ``name``, ``action``, ``min_epoch`` (see :class:`Rule`).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        patience: int = 1,
        *,
        val: str = "val_loss",
        train: str = "train_loss",
        min_epoch: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(min_epoch=min_epoch, **kwargs)
        self.threshold = float(threshold)
        self.patience = patience
        self.val, self.train = val, train
        self._gap = Hysteresis(patience)

    def _gap_at(self, snap) -> float | None:
        val = snap.summary.get((self.val, TRAINING))
        train = snap.summary.get((self.train, TRAINING))
        if val is None or train is None or not (math.isfinite(val) and math.isfinite(train)):
            return None
        return val - train

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch:
            return []
        gap = self._gap_at(snap)
        if not self._gap.update((), None if gap is None else gap > self.threshold):
            return []
        gaps = [g for e in list(history)[-self.patience:] if (g := self._gap_at(e)) is not None]
        return [
            self.make_alert(
                metric=f"{self.val} - {self.train}",
                value=gap,
                values=tuple(gaps),
                threshold=self.threshold,
                epoch=snap.epoch,
                step=snap.step,
                message=(
                    f"{self.name}: model {self.val} - {self.train} = {fmt(gap)} > "
                    f"{fmt(self.threshold)}"
                    + (f" for {self.patience} consecutive analyses" if self.patience > 1 else "")
                    + f"{when(snap.epoch, snap.step)} (over-fitting: the training loss falls "
                    f"faster than the validation loss)"
                ),
            )
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"gap": self._gap.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._gap.load_state_dict(state.get("gap", []))
