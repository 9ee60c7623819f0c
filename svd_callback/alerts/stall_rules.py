"""Rules on how much the weights still move: a stalled network and a frozen layer.

Both read the relative change of a layer's norms between consecutive analyses,

    change_t = max over m in (spectral_norm, frobenius_norm), over the layer's modes of
               |m_t / m_{t-1} - 1|,

which is exactly 0 for a layer whose weights did not move and decays geometrically (by the
optimiser's momentum factor per step, 0.9^23 ~ 0.1 per epoch for Adam on 23 steps) once the
gradients vanish, as in a network whose ReLUs all died (docs/methods.md#alert-rules).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from svd_callback.alerts.base import Alert, Hysteresis, Rule, fmt, when
from svd_callback.alerts.history import MetricHistory, Snapshot

NORMS = ("spectral_norm", "frobenius_norm")


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


def shape_change(before: Snapshot, after: Snapshot, layer: str) -> float | None:
    """max over the layer's modes of |r_after / r_before - 1| with r = spectral_norm /
    frobenius_norm = 1 / sqrt(stable_rank): how much the shape of the spectrum changed, blind
    to a rescaling of the weights (weight decay, or a BatchNorm-followed layer's free scale);
    None when no mode has both norms finite and positive in both analyses."""
    changes = []
    for name, mode in after.layers:
        if name != layer:
            continue
        values = [(snap.get(layer, "spectral_norm", mode), snap.get(layer, "frobenius_norm", mode))
                  for snap in (before, after)]
        if all(s is not None and f is not None and math.isfinite(s) and math.isfinite(f)
               and s > 0 and f > 0 for s, f in values):
            (s0, f0), (s1, f1) = values
            changes.append(abs((s1 / f1) / (s0 / f0) - 1.0))
    return max(changes) if changes else None


def change_series(history: MetricHistory, layer: str, n: int,
                  metrics: tuple[str, ...] = NORMS) -> list[float | None]:
    """The layer's relative changes over the last ``n`` pairs of consecutive analyses, oldest
    first (shorter when the history is shorter)."""
    entries = list(history)[-(n + 1):]
    pairs = zip(entries, entries[1:], strict=False)
    return [relative_change(a, b, layer, metrics) for a, b in pairs]


def _layers(snap: Snapshot, rule: Rule, normalized: bool = True) -> list[str]:
    """The analysed layers of ``snap`` selected by ``rule`` (without those whose output feeds a
    normaliser unless ``normalized``)."""
    return list(dict.fromkeys(
        name for (name, mode), record in snap.layers.items()
        if rule.selects(name, mode) and not record.skipped
        and (normalized or record.normalized_by is None)
    ))


def moved_since_start(history: MetricHistory, layer: str,
                      change_of: Callable[[Snapshot, Snapshot, str], float | None]
                      = relative_change) -> float | None:
    """The layer's change (``change_of``: :func:`relative_change` of the norms, or
    :func:`shape_change`) from the oldest kept analysis that has it to the latest."""
    latest = history.latest
    for snap in history:
        if snap is latest:
            return None
        change = change_of(snap, latest, layer)
        if change is not None:
            return change
    return None


class TrainingStalled(Rule):
    """The spectra of most layers stopped changing: a dead, frozen or not-learning network.

    A layer is *stalled* at an analysis when either

    - its relative norm change (module docstring) stayed below ``tolerance`` for ``patience``
      consecutive analyses while it has moved by less than ``max_moved`` since the oldest kept
      analysis (a learning rate far too low, a frozen network; a layer that moved and then
      settled has converged, it is not stalled), or
    - its change fell by more than ``1 / deceleration`` times in each of the last
      ``decelerations`` analyses and is now below ``slow`` (updates dying out geometrically:
      the gradients vanished and only the optimiser's momentum still moves the weights, as in a
      net killed by a too-high learning rate); one fall fewer suffices when the trainer's
      ``train_loss`` (recorded under the mode ``"training"``) fell by less than ``flat_loss``
      (relative) over the same analyses.

    The rule fires (once, re-arming when it clears) when at least ``fraction`` of the judged
    layers are stalled; or when at least ``fraction`` of all analysed layers (BatchNorm-followed
    ones included) kept their spectrum's *shape* (:func:`shape_change` below
    ``shape_tolerance`` for ``patience`` analyses, less than ``max_moved`` since the oldest kept
    analysis), which catches a network whose weights only shrink under weight decay while the
    gradients are too small to matter (weights initialised 100x too large behind BatchNorm);
    or when at least ``fraction`` of all analysed layers *collapsed*: their change fell by more
    than ``1 / collapse`` times in one analysis while the validation loss (``val_loss``;
    ``train_loss`` when there is none) did not improve by ``flat_loss`` (relative). A collapse
    is the gradients vanishing at once, as in a network that a too-high learning rate killed or
    blew up in its first epoch: flagged one analysis later, at epoch 2, where dying out needs
    three. From epoch ``min_epoch`` on.
    Layers whose output feeds a BatchNorm (``normalized_by``) are not judged stalled by their
    norms (they count for the shape and the collapse): their gradient is orthogonal to the
    weight (scale invariance), so the weight rotates while its norms change only at second
    order (1e-4 per epoch in a healthy BatchNorm CNN at val accuracy 0.99).

    Defaults (``experiments/alert_rules/RESULTS.md``, digits SmallCNN with Adam, 3 healthy
    seeds and the demo, and a BatchNorm variant with Adam and SGD): healthy SmallCNN layers
    changed by 3.8e-3 to 1.0 per epoch; at lr 1e-6 every layer changed by 2e-6 to 2e-5 per
    epoch; at lr 0.03 (dead ReLUs, train loss flat at 2.30) the changes went 6 -> 0.1 -> 0.01
    -> 1e-3 (x0.1 per epoch, Adam's beta1 = 0.9 over 23 steps) and reached exactly 0 by epoch
    9. ``tolerance = 1e-3`` sits 3.8x below the slowest healthy change. A healthy SGD run
    (lr 0.1, momentum 0.9, BatchNorm) settled 1.5 -> 0.39 -> 0.061 -> 0.012 -> 0.0057 (two
    falls below 0.2, then 0.47) while its train loss fell 1.47 -> 0.03: hence three falls
    without the loss, two with a flat loss (the dead net: flagged at epoch 3). A cosine decay to
    zero shrinks the last epochs' changes by ~9x once (over 20 epochs: lr ratios 0.36 then
    0.11), not three times.

    A healthy BatchNorm CNN at Adam lr 0.03 converged (val accuracy 0.98) with its linear
    layers changing < 1e-3 per epoch from epoch 15 on, after moving > 30% since init: hence
    ``max_moved = 0.1`` (the lr 1e-6 run had moved 4e-4 by epoch 20).

    Limits: a dead network trained with weight decay shrinks uniformly (no deceleration,
    change ~ lr * wd * steps per epoch); it is flagged only once that falls below
    ``tolerance`` and only if it had not moved before. A network of BatchNorm-followed layers
    is judged on its other layers only (often just the classifier).

    Args:
        tolerance: relative norm change per analysis below which a layer is not moving.
        patience: consecutive analyses a layer's change must stay below ``tolerance``.
        fraction: share of the judged layers that must be stalled.
        max_moved: largest change since the oldest kept analysis for which a layer below
            ``tolerance`` is stalled rather than converged.
        slow: largest change that counts as dying out.
        deceleration: largest ratio change_t / change_{t-1} that counts as dying out.
        decelerations: consecutive such falls that count as dying out (>= 2).
        collapse: largest ratio change_t / change_{t-1} that counts as a collapse.
        shape_tolerance: shape change per analysis below which a layer's spectrum is frozen
            (0: the shape condition is off).
        train_loss: name of the trainer's logged training loss (None: not read).
        val_loss: name of the trainer's logged validation loss (None: not read).
        flat_loss: relative decrease of a loss below which it counts as flat.
        min_epoch: first epoch judged (default 1: the change from the init analysis is
            judged at epoch 1).
        **kwargs: ``name``, ``action`` (``"stop"`` ends the run), ``modes``, ``layers``.
    """

    def __init__(
        self,
        tolerance: float = 1e-3,
        patience: int = 2,
        *,
        fraction: float = 0.5,
        max_moved: float = 0.1,
        slow: float = 0.02,
        deceleration: float = 0.2,
        decelerations: int = 3,
        collapse: float = 0.05,
        shape_tolerance: float = 2e-4,
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
                             ("deceleration", deceleration), ("max_moved", max_moved),
                             ("collapse", collapse), ("shape_tolerance", shape_tolerance)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        super().__init__(min_epoch=min_epoch, **kwargs)
        self.tolerance, self.patience, self.fraction = float(tolerance), patience, fraction
        self.slow, self.deceleration = float(slow), float(deceleration)
        self.max_moved = float(max_moved)
        self.decelerations, self.train_loss = decelerations, train_loss
        self.val_loss, self.collapse = val_loss, float(collapse)
        self.shape_tolerance = float(shape_tolerance)
        self.flat_loss = float(flat_loss)
        self._hysteresis = Hysteresis(1)

    def stalled(self, changes: list[float | None], moved: float | None = None,
                flat: bool = False) -> bool | None:
        """Whether one layer's recent changes (oldest first), its change since the start
        (``moved``; None: unknown, not checked) and a flat training loss say it is stalled;
        None when there are too few to tell."""
        recent = changes[-self.patience:]
        settled = moved is not None and moved >= self.max_moved
        if len(recent) == self.patience and not settled and all(
                c is not None and c < self.tolerance for c in recent):
            return True
        falls = self.decelerations - 1 if flat else self.decelerations
        last = changes[-(falls + 1):]
        if len(last) == falls + 1 and all(c is not None for c in last) and last[-1] < self.slow \
                and all(b < self.deceleration * a for a, b in zip(last, last[1:], strict=False)):
            return True
        if not changes or changes[-1] is None:
            return None
        return False

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch or len(history) < 2:
            return []
        window = max(self.patience, self.decelerations + 1)
        flat, still = self._flat_loss(history), self._still_loss(history)
        series = {layer: change_series(history, layer, window) for layer in _layers(snap, self)}
        verdicts: dict[str, tuple[bool, float | None]] = {}
        for layer in _layers(snap, self, normalized=False):
            changes = series[layer]
            verdict = self.stalled(changes, moved_since_start(history, layer), flat)
            if verdict is not None:
                verdicts[layer] = (verdict, changes[-1])
        candidates = [verdicts, self._frozen_shapes(history),
                      self._collapses(series) if still else {}]
        if not any(candidates):
            return []
        shares = [(sum(v for v, _ in c.values()) / len(c) if c else 0.0, c) for c in candidates]
        share, verdicts = max(shares, key=lambda pair: pair[0])
        stalled = [layer for layer, (verdict, _) in verdicts.items() if verdict]
        if not self._hysteresis.update((), share >= self.fraction):
            return []
        listed = ", ".join(f"{layer} ({fmt(verdicts[layer][1])})" for layer in stalled)
        return [
            self.make_alert(
                metric="stalled_fraction",
                value=share,
                values=tuple(c for _, c in verdicts.values() if c is not None),
                threshold=self.fraction,
                epoch=snap.epoch,
                step=snap.step,
                message=(
                    f"{self.name}: model: {len(stalled)} of {len(verdicts)} layers stopped "
                    f"changing (relative change of spectral/Frobenius norm < "
                    f"{fmt(self.tolerance)} for {self.patience} analyses, dying out "
                    f"x{fmt(self.deceleration)} per analysis below {fmt(self.slow)}, or "
                    f"collapsing x{fmt(self.collapse)} in one analysis while the loss stayed "
                    f"flat, or a spectrum shape changing < {fmt(self.shape_tolerance)}): "
                    f"{listed}{when(snap.epoch, snap.step)}; the network is dead, frozen or "
                    f"not learning"
                ),
            )
        ]

    def _flat_loss(self, history: MetricHistory) -> bool:
        """Whether ``train_loss`` fell by less than ``flat_loss`` (relative) over the last
        ``decelerations - 1`` analyses; False when it was not recorded in each of them."""
        if self.train_loss is None:
            return False
        entries = list(history)[-self.decelerations:]
        losses = [e.training.get(self.train_loss) for e in entries]
        if len(losses) < self.decelerations or any(
                v is None or not math.isfinite(v) for v in losses):
            return False
        first, last = losses[0], losses[-1]
        return first > 0 and (first - last) / first < self.flat_loss

    def _frozen_shapes(self, history: MetricHistory) -> dict[str, tuple[bool, float | None]]:
        """Layer -> (shape frozen, latest shape change) for every analysed layer with
        ``patience`` known shape changes (none when ``shape_tolerance`` is 0)."""
        if self.shape_tolerance <= 0:
            return {}
        entries = list(history)[-(self.patience + 1):]
        out: dict[str, tuple[bool, float | None]] = {}
        for layer in _layers(history.latest, self, normalized=True):
            series = [shape_change(a, b, layer) for a, b in zip(entries, entries[1:],
                                                                 strict=False)]
            if len(series) < self.patience or any(c is None for c in series):
                continue
            moved = moved_since_start(history, layer, shape_change)
            frozen = all(c < self.shape_tolerance for c in series) and moved is not None \
                and moved < self.max_moved
            out[layer] = (frozen, series[-1])
        return out

    def _collapses(self, changes: Mapping[str, list[float | None]]
                   ) -> dict[str, tuple[bool, float | None]]:
        """Layer -> (collapsed, latest change) for every layer of ``changes`` (its recent
        :func:`change_series`) with two known changes: collapsed when some change_i <
        ``collapse`` * change_{i-1} in the window and every later change kept falling (by
        ``deceleration``) or is below ``tolerance``, so that a collapse that goes on dying out
        stays one episode."""
        out: dict[str, tuple[bool, float | None]] = {}
        for layer, series in changes.items():
            if len(series) < 2 or series[-1] is None or series[-2] is None:
                continue
            verdict = False
            for i in range(len(series) - 1, 0, -1):
                before, now = series[i - 1], series[i]
                if before is None or now is None:
                    break
                if now < self.collapse * before:
                    verdict = True
                    break
                if not (now < self.deceleration * before or now < self.tolerance):
                    break
            out[layer] = (verdict, series[-1])
        return out

    def _still_loss(self, history: MetricHistory) -> bool:
        """Whether the validation loss (else the training loss) did not improve by
        ``flat_loss`` (relative) between the last two analyses (a rise, or a non-finite value,
        counts as not improving); False when neither was recorded in both."""
        if len(history) < 2:
            return False
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
    """One layer's weights did not move: relative norm change below ``tolerance`` for
    ``patience`` consecutive analyses (a layer left out of the optimiser, ``requires_grad``
    False, or a dead layer).

    ``tolerance = 1e-7`` is float32 round-off (machine epsilon 1.2e-7): a trained layer moves
    far more (the slowest measured, at lr 1e-6: 2e-6 per epoch), a frozen one exactly 0
    (``experiments/alert_rules/RESULTS.md``). Losses cannot show this: the digits SmallCNN with
    one conv frozen still reached val accuracy 0.94.

    Args:
        tolerance: largest relative norm change that counts as not moving.
        patience: consecutive analyses it must hold.
        min_epoch: first epoch judged (default 1).
        **kwargs: ``name``, ``action``, ``modes``, ``layers``.
    """

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
        alerts = []
        for layer in _layers(snap, self):
            change = relative_change(history[-2], snap, layer)
            if self._hysteresis.update((layer,), None if change is None
                                       else change <= self.tolerance):
                alerts.append(self.make_alert(
                    layer=layer,
                    metric="relative_norm_change",
                    value=change,
                    threshold=self.tolerance,
                    epoch=snap.epoch,
                    step=snap.step,
                    message=(
                        f"{self.name}: layer {layer!r} spectral/Frobenius norms changed by "
                        f"{fmt(change)} <= {fmt(self.tolerance)} for {self.patience} "
                        f"consecutive analyses{when(snap.epoch, snap.step)}: its weights are "
                        f"not being trained (frozen, not in the optimiser, or dead)"
                    ),
                ))
        return alerts

    def state_dict(self) -> dict[str, Any]:
        return {"hysteresis": self._hysteresis.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._hysteresis.load_state_dict(state.get("hysteresis", []))
