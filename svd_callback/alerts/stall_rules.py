"""Rules on how the weights move: a network that does not learn, frozen layers, layers left
behind by the others (vanishing gradients) and weights collapsing to zero.

They read the ``"motion"`` metrics (:mod:`svd_callback.motion`): a layer's *movement* at an
analysis is its ``weight_rotation``, the angle between its weights now and at the previous
analysis, which sees a weight that turns at constant norm (plain SGD) and is blind to a
rescaling (weight decay, or a BatchNorm-followed layer's free scale). Histories without the
motion group fall back to the relative change of the norms,

    change_t = max over m in (spectral_norm, frobenius_norm), over the layer's modes of
               |m_t / m_{t-1} - 1|,

which misses rotations (docs/methods.md#alert-rules). Thresholds and their evidence are in
docs/methods.md.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from svd_callback.alerts.base import Alert, Hysteresis, Rule, fmt, when
from svd_callback.alerts.history import MetricHistory, Snapshot
from svd_callback.alerts.layer_rules import MAX_LISTED, LayerMetricRule
from svd_callback.rmt.mp import random_stable_rank

NORMS = ("spectral_norm", "frobenius_norm")
ROTATION = "weight_rotation"
MOTION = "weight_motion"


def relative_change(before: Snapshot, after: Snapshot, layer: str,
                    metrics: tuple[str, ...] = NORMS) -> float | None:
    """max |after / before - 1| over ``metrics`` and over the modes in which ``layer`` has a
    finite positive value in both analyses; None when there is none."""
    changes = []
    for (name, mode), record in after.layers.items():
        if name != layer:
            continue
        for metric in metrics:
            new, old = record.get(metric), before.get(layer, metric, mode)
            if new is None or old is None or not (math.isfinite(new) and math.isfinite(old)):
                continue
            if old > 0:
                changes.append(abs(new / old - 1.0))
    return max(changes) if changes else None


def _layer_metric(snap: Snapshot, layer: str, metric: str) -> float | None:
    """The layer's ``metric`` in any of its modes (the motion metrics are the same in all);
    None when absent or not finite."""
    for (name, _), record in snap.layers.items():
        if name == layer:
            value = record.get(metric)
            if value is not None and math.isfinite(value):
                return value
    return None


def movement(history: MetricHistory, index: int, layer: str,
             metric: str = ROTATION) -> float | None:
    """The layer's movement at analysis ``index`` of ``history``: its ``metric``
    (``weight_rotation``, or ``weight_motion`` for a frozen layer's exact 0), else the relative
    norm change from the analysis before; None when neither can be read."""
    snap = history[index]
    value = _layer_metric(snap, layer, metric)
    if value is not None:
        return value
    if any(name == layer and record.get(metric) is not None
           for (name, _), record in snap.layers.items()):
        return None  # the motion metric is there but NaN (a first analysis, a zero weight)
    position = index % len(history)
    return None if position == 0 else relative_change(history[position - 1], snap, layer)


def movement_series(history: MetricHistory, layer: str, n: int,
                    metric: str = ROTATION) -> list[float | None]:
    """The layer's movements at the last ``n`` analyses after the first kept one, oldest
    first (shorter when the history is shorter)."""
    count = min(n, len(history) - 1)
    return [movement(history, i, layer, metric) for i in range(-count, 0)]


def analysed_layers(snap: Snapshot, rule: Rule) -> list[str]:
    """The analysed (not skipped) layers of ``snap`` that ``rule`` selects, in order."""
    return list(dict.fromkeys(
        name for (name, mode), record in snap.layers.items()
        if rule.selects(name, mode) and not record.skipped
    ))


def randomness(snap: Snapshot, layer: str) -> float | None:
    """The layer's stable rank in ``unfold`` mode (the weight matrix itself; a linear layer's
    too) over that of a random matrix of its shape (:func:`random_stable_rank`): about 1
    (1.0-1.3 for the small layers of the zoo) at a random initialisation, lower once training
    concentrates the spectrum in a few directions; None without an ``unfold`` record with
    ``stable_rank`` and ``matrix_shape``."""
    record = snap.layers.get((layer, "unfold"))
    if record is None or record.matrix_shape is None or min(record.matrix_shape) < 2:
        return None
    value = record.get("stable_rank")
    if value is None or not math.isfinite(value):
        return None
    return value / random_stable_rank(*record.matrix_shape)


class TrainingStalled(Rule):
    """Most layers' weights stopped moving while the network has not learned, or their motion
    collapsed at once: a network that does not learn, or one that died.

    A layer's movement is its ``weight_rotation`` (module docstring); a layer that does not
    move at all (exactly 0: frozen) is :class:`LayerFrozen`'s, not judged here. The rule fires
    (once, re-arming when it clears) when at least ``fraction`` of the judged layers show one
    of:

    - *not learning*: movement below ``tolerance`` (radians per analysis) for ``patience``
      consecutive analyses, or movement falling in each of them while the layer's spectrum
      stays where it started (stable rank within ``shape_tolerance`` of its first value:
      steps that shrink while the weights take no shape, as with weights initialised far too
      large), while the weights still look random: every layer's stable rank is
      at least ``random_like`` times that of a random matrix of its shape (:func:`randomness`).
      A trained network (fine-tuning, a converged run at a small learning rate) has at least
      one layer whose spectrum training concentrated, and is not judged by this condition;
      when no layer can be read that way, a flat ``train_loss`` (relative fall below
      ``flat_loss`` over the same analyses) is asked for instead, if it is logged;
    - *collapse*: movement fell more than ``1 / collapse`` times in one analysis (and has not
      risen since) while the validation loss (``val_loss``; ``train_loss`` when there is
      none) did not improve by ``flat_loss`` (relative): the gradients vanished at once, as in a
      network that a too-high learning rate killed;
    - *dying out*: movement fell more than ``1 / deceleration`` times in each of the last
      ``decelerations`` analyses and is now below ``slow`` (one fall fewer with a flat
      ``train_loss``): only the optimiser's momentum still moves the weights.

    From epoch ``min_epoch`` on.

    Args:
        tolerance: movement per analysis (radians) below which a layer does not move.
        patience: consecutive analyses below ``tolerance``.
        fraction: share of the judged layers that must show the condition.
        random_like: smallest stable-rank ratio to a random matrix for which every layer still
            looks untrained (0: the untrained check is off, motion alone decides).
        shape_tolerance: largest relative change of a layer's stable rank since its first
            analysis for which its spectrum has not formed (0: that variant is off).
        collapse: largest ratio movement_t / movement_{t-1} that counts as a collapse.
        deceleration: largest ratio that counts as one fall when dying out.
        decelerations: consecutive falls that count as dying out (>= 2).
        slow: largest movement that counts as dying out.
        train_loss, val_loss: names of the trainer's logged losses (None: not read).
        flat_loss: relative improvement of a loss below which it counts as flat.
        min_epoch: first epoch judged.
        **kwargs: ``name``, ``action`` (``"stop"`` ends the run), ``modes``, ``layers``.
    """

    MEANINGS = {
        "not learning": (
            "a learning rate far too low, or updates that do not reach the weights (a "
            "scheduler or warm-up stuck near 0, weights initialised far too large behind a "
            "normalisation layer, so that each step turns them by almost nothing)",
            "raise the learning rate (a learning-rate range test finds the usable range), "
            "check the scheduler, and that the optimiser holds the model's parameters"),
        "collapse": (
            "the network died: a learning rate too high blew the weights up and killed or "
            "saturated its units (dead ReLUs), so no gradient reaches the weights any more",
            "restart from an earlier checkpoint with a lower learning rate or a warm-up, and "
            "gradient clipping"),
        "dying out": (
            "the gradients vanished and only the optimiser's momentum still moves the "
            "weights (dead units after a blow-up, or a loss that no longer depends on them)",
            "restart with a lower learning rate or a warm-up; check for dead ReLUs"),
    }

    def __init__(
        self,
        tolerance: float = 5e-4,
        patience: int = 2,
        *,
        fraction: float = 0.5,
        random_like: float = 0.8,
        shape_tolerance: float = 0.02,
        collapse: float = 0.05,
        deceleration: float = 0.2,
        decelerations: int = 3,
        slow: float = 0.02,
        train_loss: str | None = "train_loss",
        val_loss: str | None = "val_loss",
        flat_loss: float = 0.01,
        min_epoch: int = 1,
        **kwargs: Any,
    ) -> None:
        if isinstance(decelerations, bool) or not isinstance(decelerations, int) \
                or decelerations < 2:
            raise ValueError(f"decelerations must be an integer >= 2, got {decelerations!r}")
        for label, value in (("tolerance", tolerance), ("slow", slow), ("flat_loss", flat_loss),
                             ("deceleration", deceleration), ("collapse", collapse),
                             ("random_like", random_like),
                             ("shape_tolerance", shape_tolerance)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        super().__init__(min_epoch=min_epoch, **kwargs)
        self.tolerance, self.patience, self.fraction = float(tolerance), patience, fraction
        self.random_like, self.collapse = float(random_like), float(collapse)
        self.shape_tolerance = float(shape_tolerance)
        self.deceleration, self.decelerations = float(deceleration), decelerations
        self.slow, self.flat_loss = float(slow), float(flat_loss)
        self.train_loss, self.val_loss = train_loss, val_loss
        self._hysteresis = Hysteresis(1)

    # ------------------------------------------------------------------ conditions
    def not_moving(self, series: Sequence[float | None]) -> bool | None:
        """The last ``patience`` movements are all below ``tolerance``."""
        recent = list(series[-self.patience:])
        if len(recent) < self.patience or any(v is None for v in recent):
            return None
        return all(v < self.tolerance for v in recent)  # type: ignore[operator]

    def slowing_unformed(self, history: MetricHistory, layer: str,
                         series: Sequence[float | None]) -> bool | None:
        """The layer's spectrum is where it started (stable rank within ``shape_tolerance`` of
        its first analysis's, relative) and its movement fell in each of the last
        ``patience`` analyses: steps that shrink while the weights take no shape, as when they
        were initialised far too large for the learning rate."""
        recent = list(series[-(self.patience + 1):])
        first, now = randomness(history[0], layer), randomness(history.latest, layer)
        if len(recent) < self.patience + 1 or any(v is None for v in recent) or first is None \
                or now is None or self.shape_tolerance <= 0:
            return None
        unformed = abs(now / first - 1.0) < self.shape_tolerance
        return unformed and all(b < a for a, b in zip(recent, recent[1:], strict=False))

    def not_learning(self, history: MetricHistory, layer: str,
                     series: Sequence[float | None]) -> bool | None:
        """:meth:`not_moving` or :meth:`slowing_unformed` (None when neither can tell)."""
        verdicts = [self.not_moving(series), self.slowing_unformed(history, layer, series)]
        if any(verdicts):
            return True
        return None if all(v is None for v in verdicts) else False

    def collapsed(self, series: Sequence[float | None]) -> bool | None:
        """Some movement_i < ``collapse`` movement_{i-1} in the window and every later one
        kept falling (by ``deceleration``) or is below ``tolerance``, so that a collapse that
        goes on dying out stays one episode."""
        if len(series) < 2 or series[-1] is None or series[-2] is None:
            return None
        for i in range(len(series) - 1, 0, -1):
            before, now = series[i - 1], series[i]
            if before is None or now is None:
                return False
            if now < self.collapse * before:
                return True
            if not (now < self.deceleration * before or now < self.tolerance):
                return False
        return False

    def dying(self, series: Sequence[float | None], flat: bool) -> bool | None:
        """``decelerations`` falls by ``deceleration`` ending below ``slow`` (one fewer when
        the training loss is flat)."""
        falls = self.decelerations - 1 if flat else self.decelerations
        last = list(series[-(falls + 1):])
        if len(last) < falls + 1 or any(v is None for v in last):
            return None
        return last[-1] < self.slow and all(  # type: ignore[operator]
            b < self.deceleration * a for a, b in zip(last, last[1:], strict=False))

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch or len(history) < 2:
            return []
        window = max(self.patience, self.decelerations + 1)
        series = {layer: movement_series(history, layer, window)
                  for layer in analysed_layers(snap, self)}
        judged = {layer: s for layer, s in series.items()
                  if s and s[-1] is not None and _layer_metric(snap, layer, MOTION) != 0.0}
        flat = self._flat(history, self.train_loss, self.decelerations - 1)
        untrained = self._untrained(history)
        candidates = {
            "not learning": {layer: self.not_learning(history, layer, s)
                             for layer, s in judged.items()} if untrained else {},
            "collapse": {layer: self.collapsed(s) for layer, s in judged.items()}
            if self._still(history) else {},
            "dying out": {layer: self.dying(s, flat) for layer, s in judged.items()},
        }
        shares: dict[str, tuple[float, dict[str, bool]]] = {}
        for kind, found in candidates.items():
            known = {layer: bool(v) for layer, v in found.items() if v is not None}
            if known:
                shares[kind] = (sum(known.values()) / len(known), known)
        if not shares:
            self._hysteresis.update((), None)
            return []
        kind, (share, verdicts) = max(shares.items(), key=lambda item: item[1][0])
        if not self._hysteresis.update((), share >= self.fraction):
            return []
        return [self._alert(history, snap, kind, share, verdicts, judged, untrained)]

    def _alert(self, history: MetricHistory, snap: Snapshot, kind: str, share: float,
               verdicts: Mapping[str, bool], series: Mapping[str, list[float | None]],
               untrained: bool) -> Alert:
        stalled = [layer for layer, verdict in verdicts.items() if verdict]
        listed = ", ".join(f"{layer} {self._trace(kind, series[layer])}"
                           for layer in stalled[:MAX_LISTED])
        more = len(stalled) - MAX_LISTED
        listed += f", and {more} more" if more > 0 else ""
        what = {
            "not learning": (f"moved less than {fmt(self.tolerance)} rad per analysis, or "
                             f"slowed down with a spectrum unchanged since the start (stable "
                             f"rank within {fmt(100 * self.shape_tolerance)}%), for "
                             f"{self.patience} analyses"),
            "collapse": (f"slowed more than {fmt(1 / self.collapse)}x in one analysis while "
                         f"{self._loss_text(history)} did not improve"),
            "dying out": (f"slowed more than {fmt(1 / self.deceleration)}x per analysis for "
                          f"{self.decelerations} analyses, now below {fmt(self.slow)} rad"),
        }[kind]
        extra = ""
        if kind == "not learning" and untrained:
            extra = (f"; the weights still look random (every layer's stable rank >= "
                     f"{fmt(self.random_like)} x a random matrix's, lowest "
                     f"{fmt(self._lowest_randomness(snap))})")
        meaning, advice = self.MEANINGS[kind]
        return self.make_alert(
            metric=f"{kind} fraction",
            value=share,
            values=tuple(s[-1] for layer in stalled if (s := series[layer]) and s[-1] is not None),
            threshold=self.fraction,
            epoch=snap.epoch,
            step=snap.step,
            layers=tuple(stalled),
            meaning=meaning,
            advice=advice,
            message=(f"{self.name}: model: {kind}: {len(stalled)} of {len(verdicts)} layers' "
                     f"weights {what} (weight_rotation per analysis, oldest first: {listed})"
                     f"{extra}{when(snap.epoch, snap.step)}"),
        )

    def _trace(self, kind: str, series: Sequence[float | None]) -> str:
        n = self.patience if kind == "not learning" else min(len(series), 3)
        return "(" + " -> ".join(fmt(v) for v in series[-n:]) + ")"

    # ------------------------------------------------------------------ evidence
    def _lowest_randomness(self, snap: Snapshot) -> float | None:
        values = [v for layer in analysed_layers(snap, self)
                  if (v := randomness(snap, layer)) is not None]
        return min(values) if values else None

    def _untrained(self, history: MetricHistory) -> bool:
        """Whether the network still looks untrained: every readable layer's
        :func:`randomness` >= ``random_like``; without a readable layer, whether the training
        loss is flat (True when it is not logged either: motion alone decides)."""
        if self.random_like <= 0:
            return True
        lowest = self._lowest_randomness(history.latest)
        if lowest is not None:
            return lowest >= self.random_like
        if self.train_loss is None or not history.latest.training:
            return True
        return self._flat(history, self.train_loss, self.patience)

    def _loss_text(self, history: MetricHistory) -> str:
        for name in (self.val_loss, self.train_loss):
            if name is not None and name in history.latest.training:
                return name
        return "the loss"

    def _flat(self, history: MetricHistory, name: str | None, analyses: int) -> bool:
        """Whether loss ``name`` fell by less than ``flat_loss`` (relative) over the last
        ``analyses`` analyses; False when it was not recorded in each of them."""
        if name is None:
            return False
        entries = list(history)[-(analyses + 1):]
        losses = [e.training.get(name) for e in entries]
        if len(losses) < analyses + 1 or any(v is None or not math.isfinite(v) for v in losses):
            return False
        first, last = losses[0], losses[-1]
        return first > 0 and (first - last) / first < self.flat_loss

    def _still(self, history: MetricHistory) -> bool:
        """Whether the validation loss (else the training loss) did not improve by
        ``flat_loss`` (relative) between the last two analyses (a rise, or a non-finite value,
        counts as not improving); False when neither was recorded in both."""
        for name in (self.val_loss, self.train_loss):
            if name is None:
                continue
            before, now = (history[i].training.get(name) for i in (-2, -1))
            if before is None or now is None or not math.isfinite(before) or before <= 0:
                continue
            return not math.isfinite(now) or (before - now) / before < self.flat_loss
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"hysteresis": self._hysteresis.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._hysteresis.load_state_dict(state.get("hysteresis", []))


class LayerFrozen(Rule):
    """Layers whose weights did not move at all: ``weight_motion`` (else the relative norm
    change) at most ``tolerance`` for ``patience`` consecutive analyses: left out of the
    optimiser, ``requires_grad`` False, a learning rate of 0, or no gradient reaching them
    (inputs that are all zero, a detached graph).

    ``tolerance = 1e-7`` is float32 round-off (machine epsilon 1.2e-7): a layer that trains
    moves far more, a frozen one reads exactly 0. The layers that start to hold at one analysis
    make one alert; when every layer holds, it says the optimiser updates nothing.

    Args:
        tolerance: largest movement that counts as not moving.
        patience: consecutive analyses it must hold.
        min_epoch: first epoch judged (default 1).
        **kwargs: ``name``, ``action``, ``modes``, ``layers``.
    """

    meaning = ("the layers are not trained: left out of the optimiser, requires_grad=False, a "
               "learning rate of 0 for their parameter group, or no gradient reaches them "
               "(inputs that are all zero, a detached or unused branch)")
    advice = ("if the freeze is not intended, check the optimiser's parameter groups, the "
              "scheduler, requires_grad, and that the layers' outputs reach the loss")

    def __init__(self, tolerance: float = 1e-7, patience: int = 2, *, min_epoch: int = 1,
                 **kwargs: Any) -> None:
        if not (isinstance(tolerance, int | float) and math.isfinite(tolerance)
                and tolerance >= 0):
            raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
        super().__init__(min_epoch=min_epoch, **kwargs)
        self.tolerance, self.patience = float(tolerance), patience
        self._hysteresis = Hysteresis(patience)

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch or len(history) < 2:
            return []
        layers = analysed_layers(snap, self)
        fired, held = [], 0
        for layer in layers:
            moved = movement(history, -1, layer, MOTION)
            if self._hysteresis.update((layer,), None if moved is None
                                       else moved <= self.tolerance):
                fired.append((layer, moved))
            held += self._hysteresis.streak((layer,)) >= self.patience
        if not fired:
            return []
        names = [layer for layer, _ in fired]
        listed = ", ".join(f"{layer} ({fmt(moved)})" for layer, moved in fired[:MAX_LISTED])
        listed += f", and {len(fired) - MAX_LISTED} more" if len(fired) > MAX_LISTED else ""
        every = held == len(layers) and len(layers) > 1
        subject = f"all {len(layers)} layers" if every else (
            f"layer {names[0]!r}" if len(names) == 1 else f"{len(names)} layers")
        message = (f"{self.name}: {subject}: weights moved by at most {fmt(self.tolerance)} "
                   f"(weight_motion) for {self.patience} consecutive analyses: {listed}"
                   f"{when(snap.epoch, snap.step)}")
        if every:
            message += "; the optimiser updates nothing"
        return [self.make_alert(
            layers=tuple(names), metric=MOTION, value=fired[0][1],
            values=tuple(moved for _, moved in fired), threshold=self.tolerance,
            epoch=snap.epoch, step=snap.step, message=message,
        )]

    def state_dict(self) -> dict[str, Any]:
        return {"hysteresis": self._hysteresis.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._hysteresis.load_state_dict(state.get("hysteresis", []))


class VanishingUpdates(Rule):
    """Layers left behind: a layer's movement stayed below ``lag`` times the median movement
    of the model's layers for ``patience`` consecutive analyses while that median is above
    ``tolerance`` (the rest of the network learns): the gradients vanish before they reach it.

    Layers that do not move at all are :class:`LayerFrozen`'s. The layers that start to hold at
    one analysis make one alert.

    Args:
        lag: largest ratio of a layer's movement to the median that counts as left behind.
        patience: consecutive analyses it must hold.
        tolerance: smallest median movement (radians per analysis) for which the model counts
            as moving.
        min_layers: fewest moving layers for a median to mean something.
        min_epoch: first epoch judged (default 1).
        **kwargs: ``name``, ``action``, ``modes``, ``layers``.
    """

    meaning = ("vanishing gradients: a deep stack of saturating activations (sigmoid, tanh), a "
               "deep network without normalisation or residual connections, or a too-small "
               "initialisation, so that the layers far from the loss barely learn")
    advice = ("ReLU-family activations, normalisation layers, residual connections, or a "
              "Kaiming/Xavier initialisation; per-layer learning rates help too")

    def __init__(self, lag: float = 0.01, patience: int = 2, *, tolerance: float = 5e-4,
                 min_layers: int = 3, min_epoch: int = 1, **kwargs: Any) -> None:
        for label, value in (("lag", lag), ("tolerance", tolerance)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if isinstance(min_layers, bool) or not isinstance(min_layers, int) or min_layers < 2:
            raise ValueError(f"min_layers must be an integer >= 2, got {min_layers!r}")
        super().__init__(min_epoch=min_epoch, **kwargs)
        self.lag, self.patience, self.tolerance = float(lag), patience, float(tolerance)
        self.min_layers = min_layers
        self._hysteresis = Hysteresis(patience)

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch or len(history) < 2:
            return []
        moves = {layer: m for layer in analysed_layers(snap, self)
                 if (m := movement(history, -1, layer)) is not None
                 and _layer_metric(snap, layer, MOTION) != 0.0}
        if len(moves) < self.min_layers:
            for layer in moves:
                self._hysteresis.update((layer,), None)
            return []
        median = statistics.median(moves.values())
        fired = []
        for layer, moved in moves.items():
            holds = None if median <= self.tolerance else moved < self.lag * median
            if self._hysteresis.update((layer,), holds):
                fired.append((layer, moved))
        if not fired:
            return []
        listed = ", ".join(f"{layer} {fmt(moved)}" for layer, moved in fired[:MAX_LISTED])
        listed += f", and {len(fired) - MAX_LISTED} more" if len(fired) > MAX_LISTED else ""
        subject = f"layer {fired[0][0]!r}" if len(fired) == 1 else f"{len(fired)} layers"
        return [self.make_alert(
            layers=tuple(layer for layer, _ in fired), metric=ROTATION, value=fired[0][1],
            values=tuple(moved for _, moved in fired), threshold=self.lag * median,
            epoch=snap.epoch, step=snap.step,
            message=(f"{self.name}: {subject}: weights turned less than {fmt(self.lag)} x the "
                     f"median layer's {fmt(median)} rad (weight_rotation) for {self.patience} "
                     f"consecutive analyses: {listed}{when(snap.epoch, snap.step)}"),
        )]

    def state_dict(self) -> dict[str, Any]:
        return {"hysteresis": self._hysteresis.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._hysteresis.load_state_dict(state.get("hysteresis", []))


class WeightCollapse(LayerMetricRule):
    """Weights collapsing to zero: a layer's ``frobenius_norm`` fell below ``1 / factor`` of
    its value at its first analysis, more than ``drop`` times in one analysis, or more than
    ``rate`` times in each of the last ``falls`` analyses (a geometric collapse under way). The
    first values are rule state, kept in checkpoints.

    Weight decay too strong for the learning rate shrinks every weight geometrically (SGD with
    ``weight_decay=0.2`` shrank the digits CNN's norms 2.7x per epoch, 133x by epoch 5; Adam
    with a coupled L2 of 1.0 kept it at chance with norms 130-300x below their start), while
    healthy weight decay moves norms by a few percent per epoch. A layer followed by a
    normalisation computes the same function at any scale, but 100x below its start its
    effective learning rate is 10^4 times larger: the rule judges every layer.

    Args:
        factor: how many times below its first value a norm must fall.
        rate: the fall per analysis that counts as collapsing (0: off).
        falls: consecutive analyses falling by ``rate``.
        drop: the fall in one analysis that counts as collapsing (0: off).
        patience: consecutive analyses the condition must hold (default 1).
        min_epoch: first epoch read (default 0: the initial weights are the reference).
        **kwargs: ``name``, ``action``, ``modes``, ``layers`` (see :class:`Rule`).
    """

    meaning = ("weight decay too strong for the learning rate (a coupled L2 penalty with Adam, "
               "or SGD with a large weight_decay), or a loss term that drives the weights to "
               "zero")
    advice = ("lower weight_decay (SGD: 1e-4 to 5e-4; decoupled AdamW: 0.01 to 0.1), or check "
              "the regulariser's scale")

    def __init__(self, factor: float = 100.0, rate: float = 2.0, falls: int = 2,
                 drop: float = 5.0, *, patience: int = 1, min_epoch: int = 0,
                 **kwargs: Any) -> None:
        if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 1):
            raise ValueError(f"factor must be a finite number > 1, got {factor!r}")
        if not (isinstance(rate, int | float) and math.isfinite(rate) and (rate == 0
                                                                           or rate > 1)):
            raise ValueError(f"rate must be 0 or a finite number > 1, got {rate!r}")
        if isinstance(falls, bool) or not isinstance(falls, int) or falls < 1:
            raise ValueError(f"falls must be an integer >= 1, got {falls!r}")
        if not (isinstance(drop, int | float) and math.isfinite(drop) and (drop == 0
                                                                           or drop > 1)):
            raise ValueError(f"drop must be 0 or a finite number > 1, got {drop!r}")
        super().__init__("frobenius_norm", patience=patience, min_epoch=min_epoch, **kwargs)
        self.factor, self.rate, self.falls = float(factor), float(rate), falls
        self.drop = float(drop)
        self._first: dict[tuple[str, str | None], float] = {}

    def _recent(self, history: MetricHistory, layer: str, mode: str | None) -> list[float]:
        return history.last_values(layer, self.metric, mode, self.falls + 1)

    def _falling(self, history: MetricHistory, layer: str, mode: str | None) -> bool:
        recent = self._recent(history, layer, mode)
        return self.rate > 0 and len(recent) == self.falls + 1 and all(
            b > 0 and a / b > self.rate for a, b in zip(recent, recent[1:], strict=False))

    def _dropped(self, history: MetricHistory, layer: str, mode: str | None) -> bool:
        recent = history.last_values(layer, self.metric, mode, 2)
        return self.drop > 0 and len(recent) == 2 and recent[1] > 0 \
            and recent[0] / recent[1] > self.drop

    def condition(self, history, layer, mode, value):
        first = self._first.get((layer, mode))
        if first is None:
            return None
        return value < first / self.factor or self._falling(history, layer, mode) \
            or self._dropped(history, layer, mode)

    def describe(self, history, layer, mode, value):
        first = self._first[(layer, mode)]
        below = first / value if value > 0 else math.inf
        if value < first / self.factor:
            return (f"< {fmt(first)} / {fmt(self.factor)}: {fmt(below)}x below its first "
                    f"value", first / self.factor)
        if self._dropped(history, layer, mode):
            before = history.last_values(layer, self.metric, mode, 2)[0]
            return (f"fell {fmt(before / value)}x in one analysis (from {fmt(before)}; limit "
                    f"{fmt(self.drop)}x)", self.drop)
        recent = " -> ".join(fmt(v) for v in self._recent(history, layer, mode))
        return (f"fell more than {fmt(self.rate)}x in each of {self.falls} analyses ({recent}; "
                f"{fmt(below)}x below its first value)", self.rate)

    def observe(self, layer, mode, value):
        if value > 0:
            self._first.setdefault((layer, mode), value)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "first": [[layer, mode, v] for (layer, mode), v in self._first.items()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._first = {(layer, mode): float(v) for layer, mode, v in state.get("first", [])}
