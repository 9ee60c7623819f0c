"""The alert engine: history + rules + actions, with checkpointable state."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from svd_callback.alerts.base import (
    SEVERITIES,
    Alert,
    CallableRule,
    Rule,
    check_action,
    rule_name,
    severity_of,
    when,
)
from svd_callback.alerts.history import MetricHistory
from svd_callback.alerts.layer_rules import (
    AlphaAbove,
    AlphaBelow,
    NonFiniteWeights,
    RankCollapse,
    SpectralNormGrowth,
    TrapsAppeared,
)
from svd_callback.alerts.level import (
    Condition,
    alert_condition,
    alerts_in_force,
    rule_conditions,
)
from svd_callback.alerts.model_rules import GeneralizationGap, MeanAlphaTrend
from svd_callback.alerts.stall_rules import (
    LayerFrozen,
    TrainingStalled,
    VanishingUpdates,
    WeightCollapse,
)
from svd_callback.spectra.modes import MODES

ENGINE_STATE_VERSION = 1
WEIGHT_MATRIX_MODES = tuple(name for name, mode in MODES.items() if mode.weight_matrix)
"""Conv modes whose ESD is that of the weight matrix itself (linear layers appear under every
mode with the same spectrum), the matrices Martin & Mahoney's alpha scale was calibrated on
(:attr:`svd_callback.spectra.modes.ModeSpec.weight_matrix`: ``unfold``, ``slices``)."""
ALPHA_MIN_EIGS = 100
"""Smallest ESD judged by the default alpha rules (eigenvalues per analysed matrix): on smaller
ones the fitted alpha of healthy layers sits below 2 (TempBalance's 50 is not enough; the
measurements are in ``docs/methods.md``, "Which spectra the alpha rules judge")."""


def default_rules(traps: bool = True) -> list[Rule]:
    """The built-in rules with their default thresholds (``docs/methods.md``, "Alert rules",
    gives the condition of each and the measurements behind it).

    Only :class:`NonFiniteWeights` stops training (NaN/Inf weights: the run is lost); the motion,
    blow-up, rank, collapse and loss rules log warnings; the alpha rules (:class:`AlphaBelow`,
    :class:`MeanAlphaTrend`, :class:`AlphaAbove`) and the 3x :class:`SpectralNormGrowth` report
    as information: on healthy runs nobody tuned them on they fired while adding no detection
    the warnings did not make (``docs/methods.md``, "Verdicts from the alert zoo"). Rank
    collapse is watched on ``matrix_rank`` (numerical rank), not ``stable_rank``, which halves
    in healthy training. ``SpectralNormBlowUp`` also watches the first epoch, where the
    ordinary growth rule does not look. The alpha rules judge only :data:`WEIGHT_MATRIX_MODES`
    and layers of at least :data:`ALPHA_MIN_EIGS` eigenvalues. ``traps=False`` leaves out
    :class:`TrapsAppeared` (for analyses that do not compute correlation traps, where it could
    never fire).
    """
    rules: list[Rule] = [
        NonFiniteWeights(),
        AlphaBelow(modes=WEIGHT_MATRIX_MODES, min_eigs=ALPHA_MIN_EIGS, action="info"),
        AlphaAbove(modes=WEIGHT_MATRIX_MODES, min_eigs=ALPHA_MIN_EIGS, action="info"),
        SpectralNormGrowth(action="info"),
        SpectralNormGrowth(factor=10.0, min_epoch=0, name="SpectralNormBlowUp"),
        RankCollapse(metric="matrix_rank"),
        MeanAlphaTrend(modes=WEIGHT_MATRIX_MODES, min_eigs=ALPHA_MIN_EIGS, action="info"),
        GeneralizationGap(),
        TrainingStalled(),
        LayerFrozen(),
        VanishingUpdates(),
        WeightCollapse(),
    ]
    if traps:
        rules.insert(-6, TrapsAppeared())
    return rules


class AlertEngine:
    """Runs rules on a bounded metric history after each analysis.

    ``update`` appends the analysis to the history (an analysis whose (epoch, step) is not
    later than the last one is ignored and yields no alerts, so a resumed run does not repeat
    itself), then runs every rule; each rule raises at most one alert per analysis (the alerts
    of a rule whose condition started in several places at once are merged,
    :func:`merge_alerts`). :meth:`active` lists the conditions in force afterwards
    (``alerts/active``): a rule's alert is an event, raised once per episode; its condition
    stays in force until it clears. A rule or a callable action that raises becomes a warning
    alert naming the rule and the exception (once per distinct error until the rule runs
    cleanly again): rules never crash training.

    Args:
        rules: :class:`Rule` objects or plain functions ``fn(history, epoch, step)`` (wrapped in
            :class:`CallableRule`); None for :func:`default_rules`.
        max_len: analyses kept in the history.
        max_alerts: alerts kept in :attr:`alerts_so_far` (oldest dropped first).

    Raises:
        ValueError: two rules share a name, a rule has an invalid action, or a bad size.

    Example:
        >>> from svd_callback.report import LayerReport, Report
        >>> engine = AlertEngine()
        >>> for epoch, alpha in enumerate([3.0, 1.8, 1.7, 1.6]):
        ...     report = Report([LayerReport("fc", "linear", "unfold", metrics={"alpha": alpha})])
        ...     summary = {"unfold": {"alpha_mean": alpha}}
        ...     alerts = engine.update(epoch, 100 * epoch, report, summary)
        ...     print(epoch, [a.rule for a in alerts], engine.should_stop(alerts))
        0 [] False
        1 [] False
        2 ['AlphaBelow', 'MeanAlphaTrend'] False
        3 [] False
    """

    def __init__(
        self,
        rules: Iterable[Rule | Callable[..., Any]] | None = None,
        *,
        max_len: int = 1000,
        max_alerts: int = 10_000,
    ) -> None:
        if isinstance(max_alerts, bool) or not isinstance(max_alerts, int) or max_alerts < 1:
            raise ValueError(f"max_alerts must be a positive integer, got {max_alerts!r}")
        rules = default_rules() if rules is None else list(rules)
        self.rules: list[Rule] = [
            r if isinstance(r, Rule) or not callable(r) else CallableRule(r) for r in rules
        ]
        names = [rule_name(r) for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {duplicates} (pass name=...)")
        for rule in self.rules:
            if not callable(getattr(rule, "check", None)):
                raise ValueError(f"rule {rule!r} has no check(history, epoch, step) method")
            check_action(getattr(rule, "action", "log"))
        self.history = MetricHistory(max_len)
        self._alerts: deque[Alert] = deque(maxlen=max_alerts)
        self._errors: dict[str, str] = {}  # rule name -> last reported error
        self.last_alerts: list[Alert] = []
        self._raised_by: dict[str, list[Alert]] = {}  # rule name -> its alerts of the last update

    @property
    def alerts_so_far(self) -> list[Alert]:
        return list(self._alerts)

    def update(
        self,
        epoch: int,
        step: int,
        report: Iterable[Any],
        summary: Mapping[str, Any] | None = None,
        *,
        training: Mapping[str, Any] | None = None,
        classes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[Alert]:
        """Record one analysis and return the alerts it raised (severity set by each rule's
        action). Returns [] for an analysis already recorded.

        Args:
            report: the per-(layer, mode) records (a :class:`~svd_callback.report.Report`).
            summary: the aggregates per mode (:func:`svd_callback.analysis.summarize`).
            training: the trainer's own scalars (``val_loss``, ``train_loss``, ...).
            classes: the class statistics per layer
                (:meth:`~svd_callback.classes.report.ClassReport.record_metrics`).
        """
        self._raised_by = {}
        if not self.history.append(epoch, step, report, summary, training=training,
                                   classes=classes):
            self.last_alerts = []
            return []
        epoch, step = int(epoch), int(step)
        alerts: list[Alert] = []
        for rule in self.rules:
            name = rule_name(rule)
            try:
                produced = _as_alerts(rule.check(self.history, epoch, step), name, epoch, step)
            except Exception as exc:  # noqa: BLE001 - a rule must never crash training
                alerts.extend(self._error(name, "raised", exc, epoch, step))
                continue
            self._errors.pop(name, None)
            own = self._raised_by.setdefault(name, [])
            for alert in merge_alerts(produced):
                acted = self._act(rule, name, alert, epoch, step)  # the alert, then any error
                own.append(acted[0])
                alerts.extend(acted)
        self._alerts.extend(alerts)
        self.last_alerts = alerts
        return alerts

    def active(self) -> list[Condition]:
        """The conditions of severity warning or stop in force at the latest analysis, the
        ``alerts/active`` level: for each rule that keeps :class:`~svd_callback.alerts.Hysteresis`
        state, every key that fired and has not cleared (no evidence, such as a NaN value,
        leaves it in force); for a rule without, each alert it raised at the latest update; and
        the error alerts of that update (a rule or action that raised). Rules with
        ``action="info"`` never count. The state is the rules' own, so it survives
        :meth:`state_dict` / :meth:`load_state_dict`."""
        conditions: list[Condition] = []
        for rule in self.rules:
            name = rule_name(rule)
            conditions += rule_conditions(rule, name, self._raised_by.get(name, []))
        known = {id(a) for raised in self._raised_by.values() for a in raised}
        conditions += [alert_condition(a) for a in self.last_alerts
                       if id(a) not in known and a.severity != "info"]
        return list(dict.fromkeys(conditions))

    def in_force(self) -> list[Alert]:
        """The alerts that raised the conditions in force (:meth:`active`), oldest first, each
        narrowed to the layers still in force (:func:`~svd_callback.alerts.level.alerts_in_force`):
        what holds now, since which epoch, with the numbers and limits that made it fire."""
        return alerts_in_force(self.active(), self.alerts_so_far)

    def should_stop(self, alerts: Iterable[Alert] | None = None) -> bool:
        """Whether any alert (default: those of the last update) has severity ``"stop"``."""
        alerts = self.last_alerts if alerts is None else alerts
        return any(a.severity == "stop" for a in alerts)

    def _act(self, rule: Rule, name: str, alert: Alert, epoch: int, step: int) -> list[Alert]:
        action = getattr(rule, "action", "log")
        if not callable(action):
            return [replace(alert, severity=severity_of(action))]
        try:
            verdict = action(alert)
        except Exception as exc:  # noqa: BLE001 - a user action must never crash training
            errors = self._error(name, "action raised", exc, epoch, step)
            return [replace(alert, severity="warning"), *errors]
        stop = verdict is True or verdict == "stop"
        return [replace(alert, severity="stop" if stop else "warning")]

    def _error(self, name: str, what: str, exc: Exception, epoch: int, step: int) -> list[Alert]:
        text = f"{type(exc).__name__}: {exc}"
        if self._errors.get(name) == text:
            return []
        self._errors[name] = text
        return [
            Alert(
                rule=name,
                epoch=epoch,
                step=step,
                severity="warning",
                message=(
                    f"rule {name!r} {what} {text}{when(epoch, step)} (skipped for this "
                    f"analysis; repeats of this error are not reported until the rule runs "
                    f"cleanly)"
                ),
            )
        ]

    def state_dict(self) -> dict[str, Any]:
        """History, every rule's state (by rule name), the alerts so far; plain types only."""
        return {
            "version": ENGINE_STATE_VERSION,
            "history": self.history.state_dict(),
            "rules": {rule_name(r): r.state_dict() for r in self.rules if hasattr(r, "state_dict")},
            "alerts": [a.to_dict() for a in self._alerts],
            "errors": dict(self._errors),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Rules absent from ``state`` keep their current
        state; state of rules no longer configured is ignored. Loading the state of a fresh
        engine resets this one.

        Raises:
            ValueError: ``state`` is not an engine state of a known version.
        """
        version = state.get("version") if isinstance(state, Mapping) else None
        if version != ENGINE_STATE_VERSION:
            raise ValueError(
                f"not an AlertEngine state of version {ENGINE_STATE_VERSION} (got version "
                f"{version!r})"
            )
        self.history.load_state_dict(state["history"])
        rule_states = state.get("rules", {})
        for rule in self.rules:
            name = rule_name(rule)
            if name in rule_states and hasattr(rule, "load_state_dict"):
                rule.load_state_dict(rule_states[name])
        self._alerts.clear()
        self._alerts.extend(Alert.from_dict(a) for a in state.get("alerts", []))
        self._errors = dict(state.get("errors", {}))
        self.last_alerts = []
        self._raised_by = {}


def merge_alerts(alerts: list[Alert]) -> list[Alert]:
    """One alert for the alerts one rule raised at one analysis: a rule's condition that starts
    in several places at once is one cause (its layers, values and messages joined; the most
    severe severity). A single alert is returned as it is."""
    if len(alerts) <= 1:
        return alerts
    first = alerts[0]
    prefix = f"{first.rule}: "
    parts = [a.message.removeprefix(prefix) for a in alerts]
    layers = tuple(dict.fromkeys(n for a in alerts for n in a.layers))
    modes = list(dict.fromkeys(a.mode for a in alerts if a.mode))
    severity = max((a.severity for a in alerts), key=SEVERITIES.index)
    return [replace(
        first, layer=layers[0] if len(layers) == 1 else None, layers=layers,
        mode=",".join(modes) or None, values=tuple(a.value for a in alerts), severity=severity,
        message=f"{prefix}{len(alerts)} conditions: " + "; ".join(parts),
    )]


def _as_alerts(result: Any, name: str, epoch: int, step: int) -> list[Alert]:
    """Normalise a rule's return value (iterable of Alert/str, a single one, or None).

    Raises:
        TypeError: on items that are neither Alert nor str.
    """
    if result is None:
        return []
    if isinstance(result, (Alert, str)):
        result = [result]
    out = []
    for item in result:
        if isinstance(item, str):
            item = Alert(rule=name, epoch=epoch, step=step, message=item)
        elif not isinstance(item, Alert):
            raise TypeError(f"rule returned {type(item).__name__} {item!r}; expected Alert or str")
        if item.epoch is None:
            item = replace(item, epoch=epoch, step=step if item.step is None else item.step)
        out.append(item)
    return out
