"""Built-in per-layer rules: each (layer, mode) is watched on its own, with hysteresis.

Thresholds follow Martin & Mahoney's heavy-tailed self-regularisation guidance
(docs/methods.md#alert-rules): alpha in [2, 6] well trained, alpha < 2 over-trained, alpha > 6
under-trained; correlation traps and rank collapse as signs of over-fitting or a bad learning rate.
All of them are heuristics, hence the ``patience`` and the default ``"log"`` action.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from svd_callback.alerts.base import Alert, Hysteresis, Rule, fmt, when
from svd_callback.alerts.history import LayerSnapshot, MetricHistory, Snapshot

MAX_LISTED = 8
"""Layers named one by one in a grouped alert's message; the rest are counted."""


class LayerMetricRule(Rule):
    """A condition on one metric of every selected (layer, mode), with hysteresis.

    Each analysis, for every (layer, mode) whose ``metric`` is finite, :meth:`condition` says
    whether the condition holds (True), clears (False) or cannot be told (None). A layer's
    condition fires once when it has held for ``patience`` consecutive analyses and re-arms
    when it clears. NaN/Inf values, absent metrics and skipped layers are no evidence: they
    neither extend nor break a streak. The layers that fire at one analysis make one alert,
    naming each with its value (one cause, one alert: a learning-rate spike that grows every
    layer's norm is one event).

    ``source = "classes"`` (class attribute) reads the layers' class statistics instead of
    their spectral records (``mode`` None).
    """

    source = "layers"

    def __init__(
        self, metric: str, *, patience: int = 1, start_armed: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.metric = metric
        self.patience = patience
        self._hysteresis = Hysteresis(patience, start_armed)

    def condition(self, history: MetricHistory, layer: str, mode: str | None,
                  value: float) -> bool | None:
        raise NotImplementedError

    def describe(
        self, history: MetricHistory, layer: str, mode: str | None, value: float
    ) -> tuple[str, float | None]:
        """Text after ``<metric> = <value>`` in the message (the condition against its limit),
        and the alert's threshold."""
        raise NotImplementedError

    def observe(self, layer: str, mode: str | None, value: float) -> None:
        """Hook run after each finite value has been checked (reference tracking)."""

    def phrase(self, history: MetricHistory, layer: str, mode: str | None,
               value: float) -> tuple[str, float | None]:
        """``<metric> = <value> <condition against its limit>`` for one layer, and the
        threshold."""
        detail, threshold = self.describe(history, layer, mode, value)
        return f"{self.metric} = {fmt(value)} {detail}", threshold

    def records(self, snap: Snapshot) -> list[tuple[tuple[str, str | None], LayerSnapshot]]:
        """The ((layer, mode), record) pairs this rule reads in one analysis."""
        if self.source == "classes":
            return [((layer, None), record) for layer, record in snap.classes.items()]
        return list(snap.layers.items())

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch:
            return []
        fired = []
        for (layer, mode), record in self.records(snap):
            if not self.selects(layer, mode):
                continue
            value = record.get(self.metric)
            if value is None or not math.isfinite(value):
                continue
            if self._hysteresis.update((layer, mode), self.condition(history, layer, mode, value)):
                fired.append((layer, mode, value))
            self.observe(layer, mode, value)
        if not fired:
            return []
        if len(fired) == 1:
            return [self._alert(history, snap, *fired[0])]
        return [self._grouped_alert(history, snap, fired)]

    def _where(self, layer: str, mode: str | None) -> str:
        return f"layer {layer!r}" + (f" [{mode}]" if mode else "")

    def _alert(
        self, history: MetricHistory, snap: Snapshot, layer: str, mode: str | None, value: float
    ) -> Alert:
        values = history.last_values(
            layer, self.metric, mode, self.patience, min_epoch=self.min_epoch
        )
        text, threshold = self.phrase(history, layer, mode, value)
        streak = ""
        if self.patience > 1:
            listed = ", ".join(map(fmt, values))
            streak = f" for {self.patience} consecutive analyses ({listed})"
        message = (f"{self.name}: {self._where(layer, mode)} {text}{streak}"
                   f"{when(snap.epoch, snap.step)}")
        return self.make_alert(
            layer=layer,
            mode=mode,
            metric=self.metric,
            value=value,
            values=tuple(values),
            threshold=threshold,
            epoch=snap.epoch,
            step=snap.step,
            message=message,
        )

    def _grouped_alert(self, history: MetricHistory, snap: Snapshot,
                       fired: list[tuple[str, str | None, float]]) -> Alert:
        """One alert naming every layer that fired at this analysis (the first
        :data:`MAX_LISTED` with their values and conditions)."""
        parts, threshold = [], None
        for layer, mode, value in fired[:MAX_LISTED]:
            text, threshold = self.phrase(history, layer, mode, value)
            parts.append(f"{self._where(layer, mode)} {text}")
        more = len(fired) - MAX_LISTED
        listed = "; ".join(parts) + (f"; and {more} more layers" if more > 0 else "")
        streak = f" for {self.patience} consecutive analyses" if self.patience > 1 else ""
        modes = list(dict.fromkeys(m for _, m, _ in fired if m))
        return self.make_alert(
            layers=tuple(layer for layer, _, _ in fired),
            mode=",".join(modes) or None,
            metric=self.metric,
            value=fired[0][2],
            values=tuple(value for _, _, value in fired),
            threshold=threshold,
            epoch=snap.epoch,
            step=snap.step,
            message=(f"{self.name}: {len(fired)} layers{streak}{when(snap.epoch, snap.step)}: "
                     f"{listed}"),
        )

    def state_dict(self) -> dict[str, Any]:
        return {"hysteresis": self._hysteresis.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._hysteresis.load_state_dict(state.get("hysteresis", []))


def _valid_alpha(value: float) -> bool:
    """A power-law fit gives alpha = 1 + n / sum ln(x / xmin) > 1; values <= 1 are failed-fit
    sentinels (WeightWatcher 0.7.7 reports -1)."""
    return value > 1.0


def eigenvalue_count(history: MetricHistory, layer: str, mode: str) -> float | None:
    """Eigenvalues of one analysed matrix of the layer's latest analysis: the smaller side M of
    its ``matrix_shape`` when recorded, else ``matrix_rank + rank_loss``. The two agree except
    for ``slices``, whose ESD pools kh * kw matrices of M eigenvalues each: the fit's size bias
    is that of one such matrix (a healthy Fashion-MNIST CNN's 32 x 32 slices fitted alpha 1.68
    +- 0.06 over 288 pooled eigenvalues while still improving)."""
    snap = history.latest
    if snap is None:
        return None
    record = snap.layers.get((layer, mode))
    if record is not None and record.matrix_shape is not None:
        return float(min(record.matrix_shape))
    rank, loss = snap.get(layer, "matrix_rank", mode), snap.get(layer, "rank_loss", mode)
    if rank is None or loss is None or not math.isfinite(rank + loss):
        return None
    return rank + loss


def alpha_error(snap: Snapshot | None, layer: str, mode: str, metric: str = "alpha") -> float:
    """Standard error of a fitted ``metric`` in one analysis: ``<metric>_sigma`` = (alpha - 1) /
    sqrt(n_tail) (Clauset, Shalizi & Newman 2009, eq. 3.2); 0 when not reported."""
    sigma = None if snap is None else snap.get(layer, f"{metric}_sigma", mode)
    return sigma if sigma is not None and math.isfinite(sigma) and sigma > 0 else 0.0


def judged_alpha_error(rule: Any, history: MetricHistory, layer: str, mode: str,
                       value: float) -> float | None:
    """The standard error of an alpha the alpha rules judge (:func:`alpha_error`), or None when
    they do not: a failed fit, or a matrix of fewer than ``rule.min_eigs`` eigenvalues
    (:func:`eigenvalue_count`; ``min_eigs = 0`` judges every size)."""
    if not _valid_alpha(value):
        return None
    if rule.min_eigs > 0:
        count = eigenvalue_count(history, layer, mode)
        if count is not None and count < rule.min_eigs:
            return None
    return alpha_error(history.latest, layer, mode, rule.metric)


def confidence_margin(confidence: float, error: float) -> str:
    """Message text for a level that had to clear its limit by ``confidence`` x ``error``."""
    if confidence <= 0 or error <= 0:
        return ""
    return f" by more than {fmt(confidence)} x its standard error {fmt(error)}"


def recent_jump(history: MetricHistory, layer: str, mode: str | None, window: int = 2,
                factor: float = 3.0) -> tuple[float, int] | None:
    """The largest growth of the layer's ``spectral_norm`` between consecutive analyses among
    the last ``window`` ones, with the epoch it reached, when it is at least ``factor``."""
    if mode is None:
        return None
    values = [(e.epoch, e.get(layer, "spectral_norm", mode)) for e in list(history)[-(window + 1):]]
    best = None
    for (_, a), (epoch, b) in zip(values, values[1:], strict=False):
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
            continue
        if b / a >= factor and (best is None or b / a > best[0]):
            best = (b / a, epoch)
    return best


AFTER_A_JUMP = ("the layer's spectral norm jumped {ratio}x at epoch {epoch}: a learning rate "
                "too high (a spike, a warm-up overshoot) makes a few singular values large, "
                "which lowers alpha without over-training")


class AlphaHeavyTail(LayerMetricRule):
    """Shared by the alpha rules: when a layer judged low-alpha had its spectral norm jump
    just before (:func:`recent_jump`), the alert says so in its ``meaning``."""

    def _with_jump(self, history: MetricHistory, alert: Alert,
                   fired: list[tuple[str, str | None]]) -> Alert:
        for layer, mode in fired:
            jump = recent_jump(history, layer, mode)
            if jump is not None:
                return replace(alert, meaning=AFTER_A_JUMP.format(ratio=fmt(jump[0]),
                                                                  epoch=jump[1]))
        return alert

    def _alert(self, history, snap, layer, mode, value):
        return self._with_jump(history, super()._alert(history, snap, layer, mode, value),
                               [(layer, mode)])

    def _grouped_alert(self, history, snap, fired):
        return self._with_jump(history, super()._grouped_alert(history, snap, fired),
                               [(layer, mode) for layer, mode, _ in fired])


class AlphaBelow(AlphaHeavyTail):
    """Over-trained layer: ``alpha + confidence * sigma < threshold`` for ``patience``
    consecutive analyses, on layers of at least ``min_eigs`` eigenvalues.

    Martin & Mahoney's "alpha < 2 is over-trained" was calibrated on large layers. On small ones
    the fitted alpha is both uncertain (sigma = (alpha - 1) / sqrt(n_tail): 0.15 for a tail of
    40) and biased low in healthy training (``docs/methods.md``). The alert therefore asks that
    alpha be below the threshold by ``confidence`` standard errors, and skips layers with fewer
    than ``min_eigs`` eigenvalues (TempBalance's rule: 50). ``confidence=0, min_eigs=0`` gives
    the plain published rule.

    Args:
        threshold: alpha limit (Martin & Mahoney: alpha < 2 is over-trained).
        patience: consecutive analyses the condition must hold before the alert.
        metric: ``alpha`` (KS power-law fit) or ``alpha_hill``.
        min_eigs: smallest ESD (``matrix_rank + rank_loss`` eigenvalues) judged; a record
            without those two metrics is judged.
        confidence: standard errors (``<metric>_sigma``) by which alpha must clear the limit.
        **kwargs: ``name``, ``action``, ``modes``, ``layers``, ``min_epoch`` (see :class:`Rule`).
    """

    meaning = ("Martin & Mahoney read alpha < 2 as over-training (a heavier tail than "
               "well-trained layers show); strongly regularised layers also sit there while "
               "the validation loss still improves")
    advice = ("compare with the validation loss: if it stopped improving, stop early or "
              "regularise more; if it still improves, this alone is no reason to act")

    def __init__(
        self,
        threshold: float = 2.0,
        patience: int = 2,
        *,
        metric: str = "alpha",
        min_eigs: int = 50,
        confidence: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, patience=patience, **kwargs)
        self.threshold = float(threshold)
        self.min_eigs = int(min_eigs)
        self.confidence = float(confidence)

    def condition(self, history, layer, mode, value):
        error = judged_alpha_error(self, history, layer, mode, value)
        return None if error is None else value + self.confidence * error < self.threshold

    def describe(self, history, layer, mode, value):
        margin = confidence_margin(
            self.confidence, alpha_error(history.latest, layer, mode, self.metric))
        return f"< {fmt(self.threshold)}{margin} (over-trained)", self.threshold


class AlphaAbove(LayerMetricRule):
    """Under-trained layer: ``alpha - confidence * sigma > threshold`` for ``patience``
    consecutive analyses, on layers of at least ``min_eigs`` eigenvalues, from epoch
    ``min_epoch`` on (random weights have large alpha, so epoch 0 and the random-init baseline
    are ignored by default).

    The mirror of :class:`AlphaBelow`: large fitted alphas are the most uncertain (sigma =
    (alpha - 1) / sqrt(n_tail)), so alpha must clear the limit by ``confidence`` standard
    errors. ``confidence=0, min_eigs=0`` gives the plain published rule.

    Args:
        threshold: alpha limit (Martin & Mahoney: alpha > 6 is under-trained).
        patience: consecutive analyses the condition must hold before the alert.
        min_epoch: first epoch considered (default 1).
        metric: ``alpha`` or ``alpha_hill``.
        min_eigs: smallest ESD judged (as for :class:`AlphaBelow`).
        confidence: standard errors (``<metric>_sigma``) by which alpha must clear the limit.
        **kwargs: ``name``, ``action``, ``modes``, ``layers`` (see :class:`Rule`).
    """

    meaning = ("under-training: the layer's spectrum is still close to that of random weights "
               "(Martin & Mahoney: alpha > 6), a layer that learns little")
    advice = ("check that the layer trains (its weight_rotation), its learning rate, and "
              "whether training was long enough")

    def __init__(
        self,
        threshold: float = 6.0,
        patience: int = 3,
        *,
        min_epoch: int = 1,
        metric: str = "alpha",
        min_eigs: int = 50,
        confidence: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, patience=patience, min_epoch=min_epoch, **kwargs)
        self.threshold = float(threshold)
        self.min_eigs = int(min_eigs)
        self.confidence = float(confidence)

    def condition(self, history, layer, mode, value):
        error = judged_alpha_error(self, history, layer, mode, value)
        return None if error is None else value - self.confidence * error > self.threshold

    def describe(self, history, layer, mode, value):
        margin = confidence_margin(
            self.confidence, alpha_error(history.latest, layer, mode, self.metric))
        return f"> {fmt(self.threshold)}{margin} (under-trained)", self.threshold


class SpectralNormGrowth(LayerMetricRule):
    """The spectral norm grew by more than ``factor`` relative to ``window`` analyses earlier
    (counting analyses with a finite value at epoch >= ``min_epoch``).

    ``min_epoch`` defaults to 1 because the first epoch legitimately moves far from the random
    init (a small MLP trained with SGD grew its last layer's lambda_max 7.5x in epoch 1, then
    less than 1.3x per epoch). ``metric`` must be a positive scale (``spectral_norm``,
    ``frobenius_norm``), not a logarithm. Growth from a reference below ``floor`` is not
    measured: a zero-initialised layer leaving 1e-7 grows by large factors while still
    negligible.

    A layer whose output feeds a BatchNorm/GroupNorm (``normalized_by`` on its record,
    :mod:`svd_callback.normalizers`) computes the same function at any weight scale, so its
    absolute norm growth says nothing (weight decay and the normaliser trade scale freely).
    With ``scale_free`` (default) such a layer is judged by the scale-free ratio
    ``spectral_norm / frobenius_norm`` = 1 / sqrt(stable_rank) instead: its growth by
    ``factor`` means the layer's energy concentrated in its top direction (the stable rank fell
    ``factor^2``-fold). The ratio is at most 1, so a layer of rank r can grow it by at most
    sqrt(r) (no ``factor=10`` alert below rank 100).

    Args:
        factor: ratio value_now / value_then above which the condition holds.
        window: how many analyses back the reference value is.
        floor: smallest reference value (in the metric's units) growth is measured from.
        patience: consecutive analyses the condition must hold before the alert (default 1).
        scale_free: judge normalised layers by spectral/Frobenius instead of ``metric``.
        **kwargs: ``name``, ``action``, ``modes``, ``layers``, ``min_epoch`` (see :class:`Rule`).

    Raises:
        ValueError: ``factor <= 0`` or ``window < 1``.
    """

    meaning = ("a learning rate too high (or a spike of it), exploding gradients, or a layer "
               "without normalisation whose weights grow unchecked")
    advice = ("lower the learning rate or warm it up, clip gradients (e.g. "
              "Trainer(gradient_clip_val=1.0)), or add normalisation")

    def __init__(
        self,
        factor: float = 3.0,
        window: int = 1,
        *,
        metric: str = "spectral_norm",
        patience: int = 1,
        min_epoch: int = 1,
        floor: float = 1e-3,
        scale_free: bool = True,
        **kwargs: Any,
    ) -> None:
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor!r}")
        if not (isinstance(floor, int | float) and math.isfinite(floor) and floor >= 0):
            raise ValueError(f"floor must be a finite number >= 0, got {floor!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        super().__init__(metric, patience=patience, min_epoch=min_epoch, **kwargs)
        self.factor = float(factor)
        self.window = window
        self.floor = float(floor)
        self.scale_free = bool(scale_free)

    def _normalizer(self, history: MetricHistory, layer: str, mode: str) -> str | None:
        """The layer's output normaliser when it is judged scale-free, else None."""
        record = history.latest.layers.get((layer, mode)) if history.latest else None
        return record.normalized_by if self.scale_free and record is not None else None

    def _values(self, history: MetricHistory, layer: str, mode: str) -> list[float]:
        """The last ``window + 1`` judged values, oldest first: ``metric``, or spectral /
        Frobenius for a normalised layer."""
        if self._normalizer(history, layer, mode) is None:
            return history.last_values(
                layer, self.metric, mode, self.window + 1, min_epoch=self.min_epoch
            )
        out: list[float] = []
        for snap in reversed(history):
            if len(out) > self.window or snap.epoch < self.min_epoch:
                break
            ratio = scale_free_ratio(snap, layer, mode)
            if ratio is not None:
                out.append(ratio)
        return out[::-1]

    def _pair(self, history, layer, mode) -> tuple[float, float] | None:
        values = self._values(history, layer, mode)
        if len(values) != self.window + 1 or not values[0] > 0:
            return None
        return values[0], values[-1]

    def condition(self, history, layer, mode, value):
        pair = self._pair(history, layer, mode)
        if pair is None:
            return None
        reference, now = pair
        floor = 0.0 if self._normalizer(history, layer, mode) else self.floor
        return reference >= floor and now / reference > self.factor

    def describe(self, history, layer, mode, value):
        reference, now = self._pair(history, layer, mode) or (math.nan, math.nan)
        return (
            f"grew {fmt(now / reference)}x in {self.window} analyses (from {fmt(reference)}; "
            f"limit {fmt(self.factor)}x)",
            self.factor,
        )

    def phrase(self, history, layer, mode, value):
        normalizer = self._normalizer(history, layer, mode)
        if normalizer is None:
            return super().phrase(history, layer, mode, value)
        values = self._values(history, layer, mode)
        detail, threshold = self.describe(history, layer, mode, value)
        return (f"spectral_norm / frobenius_norm = {fmt(values[-1])} {detail} (scale-free: the "
                f"output is normalised by {normalizer!r}, so the absolute norm is not judged; "
                f"the layer's energy concentrated in its top direction)", threshold)

    def _alert(self, history, snap, layer, mode, value):
        alert = super()._alert(history, snap, layer, mode, value)
        if self._normalizer(history, layer, mode) is None:
            return alert
        values = self._values(history, layer, mode)
        return replace(alert, metric=f"{self.metric}/frobenius_norm", value=values[-1],
                       values=tuple(values))


def scale_free_ratio(snap: Snapshot, layer: str, mode: str) -> float | None:
    """spectral_norm / frobenius_norm (= 1 / sqrt(stable_rank)) of one record, None when
    either is missing, not finite or the Frobenius norm is 0."""
    spectral = snap.get(layer, "spectral_norm", mode)
    frobenius = snap.get(layer, "frobenius_norm", mode)
    if spectral is None or frobenius is None or not frobenius > 0:
        return None
    ratio = spectral / frobenius
    return ratio if math.isfinite(ratio) else None


class RankCollapse(LayerMetricRule):
    """A rank measure fell by more than ``drop_fraction`` below its reference: the maximum
    seen so far (``reference="max"``) or the first value seen (``"first"``).

    The references are rule state (kept in :meth:`state_dict`), so they outlive the bounded
    history. Note that ``stable_rank`` falls a lot in healthy training as spikes leave the MP
    bulk (a small MLP: 39 -> 15 and 64 -> 23 within 5 epochs of SGD), while the numerical
    ``matrix_rank`` stays put unless the layer really collapses (the same MLP at a diverging
    learning rate: 256 -> 2); :func:`~svd_callback.alerts.default_rules` uses ``matrix_rank``.

    Args:
        metric: ``stable_rank``, ``matrix_rank`` or ``mp_softrank``-like positive rank measure.
        drop_fraction: the condition holds when value < (1 - drop_fraction) * reference.
        reference: ``"max"`` or ``"first"``.
        patience: consecutive analyses the condition must hold before the alert (default 1).
        **kwargs: ``name``, ``action``, ``modes``, ``layers``, ``min_epoch`` (see :class:`Rule`).

    Raises:
        ValueError: ``drop_fraction`` outside (0, 1) or an unknown ``reference``.
    """

    meaning = ("the layer lost rank: rows or columns of zeros (dead units), or weights pushed "
               "into a few directions by a too-high learning rate or too strong "
               "regularisation")
    advice = "lower the learning rate or the regularisation; look for dead units"

    def __init__(
        self,
        metric: str = "stable_rank",
        drop_fraction: float = 0.5,
        reference: str = "max",
        *,
        patience: int = 1,
        **kwargs: Any,
    ) -> None:
        if not 0 < drop_fraction < 1:
            raise ValueError(f"drop_fraction must be in (0, 1), got {drop_fraction!r}")
        if reference not in ("max", "first"):
            raise ValueError(f"reference must be 'max' or 'first', got {reference!r}")
        super().__init__(metric, patience=patience, **kwargs)
        self.drop_fraction = float(drop_fraction)
        self.reference = reference
        self._references: dict[tuple[str, str], float] = {}

    def condition(self, history, layer, mode, value):
        reference = self._references.get((layer, mode))
        if reference is None or not reference > 0:
            return None
        return value < (1 - self.drop_fraction) * reference

    def describe(self, history, layer, mode, value):
        reference = self._references[(layer, mode)]
        level = (1 - self.drop_fraction) * reference
        drop = 100 * (1 - value / reference)
        return (
            f"< {fmt(level)}: fell {drop:.0f}% below its {self.reference} {fmt(reference)} "
            f"(rank collapse)",
            level,
        )

    def observe(self, layer, mode, value):
        key = (layer, mode)
        if self.reference == "first":
            self._references.setdefault(key, value)
        else:
            self._references[key] = max(self._references.get(key, value), value)

    def state_dict(self) -> dict[str, Any]:
        refs = [[layer, mode, v] for (layer, mode), v in self._references.items()]
        return {**super().state_dict(), "references": refs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._references = {(l, m): float(v) for l, m, v in state.get("references", [])}


class TrapsAppeared(LayerMetricRule):
    """Correlation traps appeared: ``num_traps >= min_traps`` in a layer previously seen with
    fewer (a layer that has traps from its first analysis on does not fire until it has been
    seen clean once).

    Args:
        min_traps: number of traps that counts as present.
        patience: consecutive analyses the condition must hold before the alert (default 1).
        **kwargs: ``name``, ``action``, ``modes``, ``layers``, ``min_epoch`` (see :class:`Rule`).
    """

    meaning = ("a few large weight entries carry correlations that random weights do not "
               "(Martin & Mahoney: often a learning rate too high, or over-fitting)")
    advice = "lower the learning rate; compare with the validation loss"

    def __init__(
        self,
        min_traps: int = 1,
        *,
        metric: str = "num_traps",
        patience: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, patience=patience, start_armed=False, **kwargs)
        self.min_traps = min_traps

    def condition(self, history, layer, mode, value):
        return value >= self.min_traps

    def describe(self, history, layer, mode, value):
        before = history.last_values(
            layer, self.metric, mode, self.patience + 1, min_epoch=self.min_epoch
        )
        was = f" (was {fmt(before[0])})" if len(before) == self.patience + 1 else ""
        return f">= {fmt(self.min_traps)}: correlation traps appeared{was}", float(self.min_traps)


class NonFiniteWeights(Rule):
    """A layer was skipped because its weights hold NaN/Inf: the run has diverged.

    Matches the layer's skip ``reason`` (from :func:`svd_callback.analyze`, e.g. ``"weight has
    non-finite entries (3 NaN, 0 Inf)"``) against ``pattern``. One alert per layer (all its
    modes together), immediately, once per onset. The default action is ``"stop"``: an optimiser
    step that produced a NaN weight spreads it to every later step, so the remaining epochs
    cannot recover and only waste compute; pass ``action="log"`` to keep training.

    Args:
        pattern: regular expression searched (case-insensitive) in the skip reason.
        **kwargs: ``name``, ``action``, ``modes``, ``layers``, ``min_epoch`` (see :class:`Rule`).
    """

    action = "stop"
    meaning = ("the run diverged: a learning rate too high, no gradient clipping, or NaN/Inf "
               "in the inputs or the loss (a log of 0, a division by 0)")
    advice = ("restart from the last finite checkpoint with a lower learning rate and gradient "
              "clipping; check the data and the loss for NaN")

    def __init__(self, pattern: str = r"non-?finite", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pattern = pattern
        self._pattern = re.compile(pattern, re.IGNORECASE)
        self._hysteresis = Hysteresis(1)

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch:
            return []
        found: dict[str, tuple[list[str], str | None]] = {}
        for (layer, mode), record in snap.layers.items():
            if not self.selects(layer, mode):
                continue
            modes, reason = found.setdefault(layer, ([], None))
            if record.reason is not None and self._pattern.search(record.reason):
                modes.append(mode)
                found[layer] = (modes, record.reason)
        alerts = []
        for layer, (modes, reason) in found.items():
            if self._hysteresis.update((layer,), bool(modes)):
                joined = ",".join(modes)
                alerts.append(
                    self.make_alert(
                        layer=layer,
                        mode=joined,
                        epoch=snap.epoch,
                        step=snap.step,
                        message=(
                            f"{self.name}: layer {layer!r} [{joined}] skipped: {reason}"
                            f"{when(snap.epoch, snap.step)}; the weights are not finite, the "
                            f"run has diverged"
                        ),
                    )
                )
        return alerts

    def state_dict(self) -> dict[str, Any]:
        return {"hysteresis": self._hysteresis.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._hysteresis.load_state_dict(state.get("hysteresis", []))
