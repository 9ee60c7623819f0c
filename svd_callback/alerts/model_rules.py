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

    meaning = ("the model's mean alpha below 2, Martin & Mahoney's proposed early-stopping "
               "signal of over-training (experimental)")
    advice = "compare with the validation loss before stopping"

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


class GeneralizationGap(Rule):
    """Over-fitting, judged on the scale of the trainer's own metrics, only once the
    validation result stops improving.

    Reads the trainer's logged scalars (``Snapshot.training``), not the spectra. The condition
    holds at an analysis when the validation result has not improved on its best for the last
    ``patience`` analyses and either

    - *accuracies* (when both ``train_acc`` and ``val_acc`` are logged): the training accuracy
      exceeds the validation accuracy by more than ``acc_gap`` (a fraction: 0.15 is 15 points);
      the validation result is ``val_acc``, improving means rising by more than
      ``min_delta``; or
    - *losses* (otherwise): the validation loss is more than ``1 + loss_rise`` times its best
      while the training loss fell (by more than ``min_delta``, relative) over the same
      analyses; improving means falling by more than ``min_delta`` relative to the best.

    Both are free of the loss's units: a VAE whose validation loss of ~260 nats per image sits
    0.5 nats above its training loss and falls every epoch is healthy, and is silent here.
    Silent when the scalars are missing (no validation data, other names: set ``val_loss``,
    ``train_loss``, ``val_acc``, ``train_acc``). Thresholds and their evidence:
    docs/methods.md#alert-rules.

    Args:
        acc_gap: largest tolerated ``train_acc - val_acc``.
        loss_rise: largest tolerated relative rise of the validation loss above its best.
        patience: analyses without improvement before the condition can hold.
        min_delta: smallest change that counts as an improvement (absolute for accuracies,
            relative for losses).
        val_loss, train_loss, val_acc, train_acc: names of the logged scalars (None: not read).
        **kwargs: ``name``, ``action``, ``min_epoch`` (see :class:`Rule`).
    """

    meaning = ("over-fitting (the network memorises its training set), or training labels that "
               "do not match the validation labels (label noise, a shifted label mapping, a "
               "class imbalance, a different preprocessing of the two sets)")
    advice = ("check the validation pipeline against the training one; then more data or "
              "augmentation, stronger regularisation (weight decay, dropout), or stop at the "
              "best validation checkpoint")

    def __init__(
        self,
        acc_gap: float = 0.15,
        loss_rise: float = 1.0,
        patience: int = 2,
        *,
        min_delta: float = 0.005,
        val_loss: str | None = "val_loss",
        train_loss: str | None = "train_loss",
        val_acc: str | None = "val_acc",
        train_acc: str | None = "train_acc",
        min_epoch: int = 1,
        **kwargs: Any,
    ) -> None:
        for label, value in (("acc_gap", acc_gap), ("loss_rise", loss_rise),
                             ("min_delta", min_delta)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        super().__init__(min_epoch=min_epoch, **kwargs)
        self.acc_gap, self.loss_rise = float(acc_gap), float(loss_rise)
        self.patience, self.min_delta = patience, float(min_delta)
        self.val_loss, self.train_loss = val_loss, train_loss
        self.val_acc, self.train_acc = val_acc, train_acc
        self._gap = Hysteresis(1)

    def _series(self, history: MetricHistory, name: str | None) -> list[float]:
        """The scalar's finite values at the analyses from ``min_epoch`` on (an analysis
        without it, e.g. between two validations, is left out)."""
        if name is None:
            return []
        values = (e.training.get(name, math.nan) for e in history if e.epoch >= self.min_epoch)
        return [v for v in values if math.isfinite(v)]

    def _stalled(self, values: list[float], higher_is_better: bool) -> bool | None:
        """Whether the last ``patience`` values did not improve on the best before them by
        ``min_delta`` (None: too few finite values)."""
        if len(values) <= self.patience:
            return None
        before, recent = values[:-self.patience], values[-self.patience:]
        if higher_is_better:
            return max(recent) <= max(before) + self.min_delta
        best = min(before)
        return min(recent) >= best - self.min_delta * abs(best)

    def _evidence(self, history: MetricHistory) -> tuple[bool | None, str, str, float, float]:
        """(condition, text with the numbers against their limits, metric, value, threshold)."""
        snap = history.latest
        train_acc, val_acc = self._series(history, self.train_acc), self._series(
            history, self.val_acc)
        latest = [snap.training.get(n, math.nan) if n else math.nan
                  for n in (self.train_acc, self.val_acc)]
        if all(math.isfinite(v) for v in latest):
            gap = train_acc[-1] - val_acc[-1]
            stalled = self._stalled(val_acc, higher_is_better=True)
            holds = None if stalled is None else stalled and gap > self.acc_gap
            text = (f"{self.train_acc} - {self.val_acc} = {fmt(train_acc[-1])} - "
                    f"{fmt(val_acc[-1])} = {fmt(gap)} > {fmt(self.acc_gap)} while {self.val_acc} "
                    f"has not improved (best {fmt(max(val_acc))}) for {self.patience} "
                    f"analyses")
            return holds, text, f"{self.train_acc} - {self.val_acc}", gap, self.acc_gap
        val, train = self._series(history, self.val_loss), self._series(history, self.train_loss)
        if self.val_loss is None or not math.isfinite(snap.training.get(self.val_loss, math.nan)) \
                or len(train) <= self.patience:
            return None, "", "", math.nan, math.nan
        recent_train = train[-self.patience - 1:]
        best = min(val)
        rise = val[-1] / best - 1.0 if best > 0 else math.nan
        falling = recent_train[0] > 0 and \
            (recent_train[0] - recent_train[-1]) / recent_train[0] > self.min_delta
        stalled = self._stalled(val, higher_is_better=False)
        holds = None if stalled is None or not math.isfinite(rise) else \
            stalled and falling and rise > self.loss_rise
        text = (f"{self.val_loss} = {fmt(val[-1])} is {fmt(1 + rise)}x its best {fmt(best)} "
                f"(limit {fmt(1 + self.loss_rise)}x) while {self.train_loss} fell "
                f"{fmt(recent_train[0])} -> {fmt(recent_train[-1])} over {self.patience} analyses")
        return holds, text, f"{self.val_loss} / best - 1", rise, self.loss_rise

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch:
            return []
        holds, text, metric, value, threshold = self._evidence(history)
        if not self._gap.update((), holds):
            return []
        return [self.make_alert(
            metric=metric, value=value, threshold=threshold, epoch=snap.epoch, step=snap.step,
            message=f"{self.name}: model {text}{when(snap.epoch, snap.step)}",
        )]

    def state_dict(self) -> dict[str, Any]:
        return {"gap": self._gap.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._gap.load_state_dict(state.get("gap", []))
