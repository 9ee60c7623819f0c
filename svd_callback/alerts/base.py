"""Alerts, the rule interface and the hysteresis that keeps rules from repeating themselves.

A rule reads a :class:`~svd_callback.alerts.history.MetricHistory` after each analysis and
returns :class:`Alert` records. Its ``action`` says what should happen: ``"info"`` (an alert of
severity ``"info"``: reported, never counted in ``alerts/active``), ``"log"`` (severity
``"warning"``), ``"stop"`` (severity ``"stop"``: the training should end), or a callable that
receives each alert and returns True (or ``"stop"``) to ask for a stop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from svd_callback.alerts.history import MetricHistory

SEVERITIES = ("info", "warning", "stop")
ACTIONS = ("info", "log", "stop")
COUNTED_SEVERITIES = ("warning", "stop")
"""Severities counted in ``alerts/active`` and ``alerts/raised``."""
Action = str | Callable[["Alert"], Any]


def fmt(value: float | None) -> str:
    """Short number for messages (4 significant digits)."""
    return "None" if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class Alert:
    """One alert: which rule, where (layers and mode; none for a model-level condition), which
    metric, the value(s) that triggered it, the threshold, when, how severe, and what it
    usually means and what to try.

    A rule raises one alert per analysis for one cause: when its condition starts to hold in
    several layers at once they are named together in ``layers`` (``layer`` is then None; with
    one layer, ``layer`` is that layer).
    ``value`` None is stored as NaN. ``values`` holds the values behind the decision, oldest
    first: the ``patience`` consecutive values of one layer, or the value of each of
    ``layers`` in their order. ``message`` states the condition that held with its numbers
    against their limits (an empty one is filled with a generic line); ``meaning`` the likely
    causes the evidence supports and ``advice`` what to try (see :meth:`text`).
    """

    rule: str
    layer: str | None = None
    mode: str | None = None
    metric: str | None = None
    value: float | None = math.nan
    values: tuple[float, ...] = ()
    threshold: float | None = None
    epoch: int | None = None
    step: int | None = None
    severity: str = "warning"
    message: str = ""
    layers: tuple[str, ...] = ()
    meaning: str = ""
    advice: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "value", math.nan if self.value is None else float(self.value))
        layers = tuple(str(n) for n in self.layers)
        if not layers and self.layer is not None:
            layers = (self.layer,)
        object.__setattr__(self, "layers", layers)
        if self.layer is None and len(layers) == 1:
            object.__setattr__(self, "layer", layers[0])
        if self.threshold is not None:
            object.__setattr__(self, "threshold", float(self.threshold))
        if not self.message:
            object.__setattr__(self, "message", self._default_message())

    def text(self) -> str:
        """The message, then ``Likely: <meaning>.`` and ``Try: <advice>.`` when given."""
        out = self.message
        for label, part in (("Likely", self.meaning), ("Try", self.advice)):
            if part:
                out = f"{out.rstrip('.')}. {label}: {part.rstrip('.')}."
        return out

    def _default_message(self) -> str:
        where = ("model" if not self.layers else f"layer {self.layers[0]!r}"
                 if len(self.layers) == 1 else f"layers {', '.join(map(repr, self.layers))}")
        if self.mode:
            where += f" [{self.mode}]"
        what = f" {self.metric} = {fmt(self.value)}" if self.metric else ""
        limit = f" (threshold {fmt(self.threshold)})" if self.threshold is not None else ""
        return f"{self.rule}: {where}{what}{limit}{when(self.epoch, self.step)}"

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (``values`` and ``layers`` as lists)."""
        out = asdict(self)
        out["values"] = list(self.values)
        out["layers"] = list(self.layers)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        """Restore :meth:`to_dict` output (also of alerts written before ``layers``,
        ``meaning`` and ``advice`` existed; unknown keys are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k in known}
        return cls(**{**fields, "values": tuple(data.get("values", ())),
                      "layers": tuple(data.get("layers", ()))})

    def __str__(self) -> str:
        return self.message


def when(epoch: int | None, step: int | None) -> str:
    """`` at epoch E (step S)`` for messages."""
    if epoch is None:
        return ""
    return f" at epoch {epoch}" + ("" if step is None else f" (step {step})")


def check_action(action: Any) -> Action:
    """Validate a rule action.

    Raises:
        ValueError: ``action`` is neither ``"info"``, ``"log"``, ``"stop"`` nor callable.
    """
    if callable(action) or action in ACTIONS:
        return action
    raise ValueError(f"action must be one of {ACTIONS} or a callable, got {action!r}")


def severity_of(action: Action) -> str:
    """``"info"`` -> ``"info"``, ``"stop"`` -> ``"stop"``, anything else -> ``"warning"``."""
    return action if action in ("info", "stop") else "warning"


class Rule:
    """Base class of alert rules.

    Subclasses implement :meth:`check`, which runs once per new analysis and returns the
    alerts to raise (built with :meth:`make_alert` so that ``rule`` and ``severity`` follow the
    rule's ``name`` and ``action``). Rules that keep state across analyses (hysteresis,
    reference values) expose it through :meth:`state_dict` / :meth:`load_state_dict` with plain
    Python types, so it survives a checkpoint.

    Args:
        name: unique name (default: the class attribute ``name`` or the class name).
        action: ``"info"``, ``"log"``, ``"stop"``, or a callable ``action(alert)`` returning
            True (or ``"stop"``) to ask for a stop.
        modes: conv modes to consider (None: every mode present, each on its own).
        layers: regular expression a layer name must contain a match of (None: all layers).
        min_epoch: analyses at earlier epochs are ignored.

    Raises:
        ValueError: on an invalid ``action`` or a negative ``min_epoch``.

    Example:
        >>> class LossOfSpikes(Rule):
        ...     def check(self, history, epoch, step):
        ...         e = history.latest
        ...         return [self.make_alert(layer=n, mode=m, metric="num_spikes",
        ...                                 epoch=epoch, step=step)
        ...                 for (n, m), r in e.layers.items() if r.get("num_spikes") == 0]
        >>> LossOfSpikes(action="log").name
        'LossOfSpikes'
    """

    name: str = ""
    action: Action = "log"
    meaning: str = ""
    """The likely causes of the rule's condition (an alert's ``meaning`` by default)."""
    advice: str = ""
    """What to try (an alert's ``advice`` by default)."""

    def __init__(
        self,
        *,
        name: str | None = None,
        action: Action | None = None,
        modes: Sequence[str] | None = None,
        layers: str | None = None,
        min_epoch: int = 0,
    ) -> None:
        self.name = name or type(self).name or type(self).__name__
        self.action = check_action(type(self).action if action is None else action)
        self.modes = None if modes is None else tuple(modes)
        if isinstance(modes, str):
            self.modes = (modes,)
        self.layers = layers
        self._layer_pattern = None if layers is None else re.compile(layers)
        if min_epoch < 0:
            raise ValueError(f"min_epoch must be >= 0, got {min_epoch!r}")
        self.min_epoch = int(min_epoch)

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        raise NotImplementedError

    def selects(self, layer: str | None, mode: str | None) -> bool:
        """Whether (layer, mode) is within this rule's ``modes`` and ``layers`` filters (a None
        layer or mode, as for model-level aggregates without a mode, passes that filter)."""
        modes = getattr(self, "modes", None)
        if modes is not None and mode is not None and mode not in modes:
            return False
        pattern = getattr(self, "_layer_pattern", None)
        return pattern is None or layer is None or pattern.search(layer) is not None

    def make_alert(self, **fields: Any) -> Alert:
        """An :class:`Alert` with this rule's name, the severity its action implies and its
        ``meaning`` and ``advice``."""
        fields.setdefault("rule", rule_name(self))
        fields.setdefault("severity", severity_of(getattr(self, "action", "log")))
        fields.setdefault("meaning", getattr(self, "meaning", ""))
        fields.setdefault("advice", getattr(self, "advice", ""))
        return Alert(**fields)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (stateless rules ignore it)."""

    def hysteresis_states(self) -> dict[str, Hysteresis]:
        """The :class:`Hysteresis` states whose fired keys are this rule's conditions in force
        (``alerts/active``, :mod:`svd_callback.alerts.level`), by name. Default: the rule's
        attributes that are one; a rule that keeps them elsewhere overrides this."""
        return {n: v for n, v in sorted(vars(self).items()) if isinstance(v, Hysteresis)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={rule_name(self)!r}, action={self.action!r})"


def rule_name(rule: Any) -> str:
    """A rule's name, also for subclasses that skipped ``Rule.__init__``."""
    return getattr(rule, "name", "") or type(rule).__name__


class CallableRule(Rule):
    """A rule made from a function ``fn(history, epoch, step) -> Iterable[Alert | str]``.

    Strings become alerts of this rule (model-level, the string as message); a single Alert or
    string, or None, is accepted as well.

    Example:
        >>> def too_many_skipped(history, epoch, step):
        ...     skipped = sum(r.skipped for r in history.latest.layers.values())
        ...     return [f"{skipped} layers skipped at epoch {epoch}"] if skipped > 3 else []
        >>> CallableRule(too_many_skipped).name
        'too_many_skipped'
    """

    def __init__(
        self,
        fn: Callable[[MetricHistory, int, int], Iterable[Alert | str] | Alert | str | None],
        *,
        name: str | None = None,
        action: Action = "log",
        **kwargs: Any,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"CallableRule needs a callable, got {fn!r}")
        default = getattr(fn, "__name__", "") or type(fn).__name__
        super().__init__(name=name or default, action=action, **kwargs)
        self.fn = fn

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        result = self.fn(history, epoch, step)
        if result is None:
            return []
        if isinstance(result, (str, Alert)):
            result = [result]
        return [
            self.make_alert(message=item, epoch=epoch, step=step) if isinstance(item, str) else item
            for item in result
        ]


@dataclass
class Hysteresis:
    """Fire once when a condition has held for ``patience`` consecutive analyses; re-arm when
    it clears.

    ``update(key, holds)`` takes True (holds), False (clears: streak reset, re-armed) or None
    (no evidence, e.g. a NaN value: the state is left as it was). With ``start_armed=False`` a
    new key must first be seen clear before it can fire (for "appeared" conditions).
    :meth:`holding` lists the keys that fired and have not cleared since: the conditions in
    force, as opposed to the firing, which happens once per episode.
    """

    patience: int = 1
    start_armed: bool = True
    _state: dict[tuple, list] = field(default_factory=dict)  # key -> [streak, disarmed, fired]

    def __post_init__(self) -> None:
        patience = self.patience
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {self.patience!r}")

    def update(self, key: Hashable, holds: bool | None) -> bool:
        key = key if isinstance(key, tuple) else (key,)
        state = self._state.setdefault(key, [0, not self.start_armed, False])
        if holds is None:
            return False
        if not holds:
            state[:] = [0, False, False]
            return False
        state[0] += 1
        if state[0] >= self.patience and not state[1]:
            state[1] = state[2] = True
            return True
        return False

    def streak(self, key: Hashable) -> int:
        key = key if isinstance(key, tuple) else (key,)
        return self._state.get(key, [0, False, False])[0]

    def holding(self) -> list[tuple]:
        """The keys whose condition fired and has not cleared since (no evidence, None, leaves
        a key as it was), in the order first seen."""
        return [key for key, (_, _, fired) in self._state.items() if fired]

    def state_dict(self) -> list[list]:
        return [[list(k), s, d, f] for k, (s, d, f) in self._state.items()]

    def load_state_dict(self, state: Iterable[Sequence]) -> None:
        """Restore :meth:`state_dict` output. Entries of three (key, streak, disarmed), written
        before :meth:`holding` existed, count as fired when disarmed after ``patience`` holds."""
        self._state = {}
        for key, streak, disarmed, *fired in state:
            held = bool(fired[0]) if fired else bool(disarmed) and int(streak) >= self.patience
            self._state[tuple(key)] = [int(streak), bool(disarmed), held]
