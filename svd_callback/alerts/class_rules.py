"""Built-in rules on the class-level statistics (docs/methods.md#alert-rules).

They read the class statistics that :class:`~svd_callback.SpectralMonitor` gives the alert
engine at each analysis when its class analysis is on (``Snapshot.classes``: one record per
analysed layer, from :meth:`ClassReport.record_metrics`), with the same
hysteresis as the per-layer spectral rules: each fires once when its condition starts holding
and re-arms when it clears; NaN values (a class absent from the probe, a statistic that could not
be computed) are no evidence either way.

- :class:`ClassOverlapRising` — the mean class-overlap Jaccard of a layer rose in ``patience``
  consecutive analyses: classes share more and more neurons.
- :class:`ClassLostSpecificNeurons` — a class that had at least two class-specific neurons in a
  layer (neurons of its hyperedge in no other class's edge) has none of them left: neurons are
  followed by their singular vectors, so a class whose specific neurons were replaced by other
  vectors has lost them too.
- :class:`ClassFeaturesEmpty` — a class's set S_c of class-specific penultimate features became
  empty (its images no longer activate any feature).
- :class:`FactorizationRankCollapse` — the activation factorization rank of a layer fell by more
  than half below its maximum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from svd_callback.alerts.base import Alert, Hysteresis, Rule, fmt, when
from svd_callback.alerts.history import MetricHistory
from svd_callback.alerts.layer_rules import LayerMetricRule, RankCollapse


class ClassOverlapRising(LayerMetricRule):
    """Class overlap rising: a layer's ``jaccard_mean`` exceeded its previous finite value by
    more than ``min_rise`` in ``patience`` consecutive analyses.

    Falling overlap is what training should do (classes get their own neurons); a sustained rise
    means the classes merge in that layer (over-regularisation, collapse of the representation,
    or label noise being fitted). The first epoch is ignored by default: the overlap of random
    weights is close to 1 and moves erratically. Rises below ``min_rise`` are noise: in a healthy
    Fashion-MNIST run of the example CNN, a layer's ``jaccard_mean`` moved by 0.005-0.3 between
    epochs while falling overall.

    Args:
        patience: consecutive rises needed.
        min_rise: smallest increase that counts as a rise.
        metric: the class statistic watched (``jaccard_mean`` or ``jaccard_max``).
        min_epoch: first epoch considered (default 1).
        **kwargs: ``name``, ``action``, ``layers`` (see :class:`Rule`).
    """

    source = "classes"
    meaning = ("the classes share more and more of the layer's top neurons: the "
               "representation merges classes (too strong regularisation, a collapse, or noisy "
               "labels being fitted)")
    advice = "compare with the validation accuracy per class; check label quality"

    def __init__(
        self,
        patience: int = 3,
        min_rise: float = 0.01,
        *,
        metric: str = "jaccard_mean",
        min_epoch: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, patience=patience, min_epoch=min_epoch, **kwargs)
        if not min_rise >= 0:
            raise ValueError(f"min_rise must be >= 0, got {min_rise!r}")
        self.min_rise = float(min_rise)

    def _previous(self, history: MetricHistory, layer: str, mode: str) -> float | None:
        values = history.last_values(layer, self.metric, mode, 2, min_epoch=self.min_epoch)
        return values[0] if len(values) == 2 else None

    def condition(self, history, layer, mode, value):
        previous = self._previous(history, layer, mode)
        return None if previous is None else value > previous + self.min_rise

    def describe(self, history, layer, mode, value):
        previous = self._previous(history, layer, mode)
        return (f"rose from {fmt(previous)} (class overlap rising; the classes share more "
                f"neurons)", self.min_rise)

    def _alert(self, history, snap, layer, mode, value):
        """The alert with the ``patience + 1`` values behind the rises (baseline first)."""
        values = history.last_values(
            layer, self.metric, mode, self.patience + 1, min_epoch=self.min_epoch
        )
        return replace(super()._alert(history, snap, layer, mode, value), values=tuple(values))


class _PerClassCountRule(Rule):
    """A per-class count ``<prefix><c>`` of a class record fell to 0 after having been at
    least ``min_count`` (one hysteresis key per (layer, class)): a count >= ``min_count`` arms the
    rule, 0 for ``patience`` analyses fires it, counts in between are no evidence."""

    prefix = ""
    what = ""
    default_min_count = 1

    def __init__(
        self, patience: int = 1, *, min_count: int | None = None, min_epoch: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(min_epoch=min_epoch, **kwargs)
        min_count = self.default_min_count if min_count is None else min_count
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
        self.patience = patience
        self.min_count = min_count
        self._hysteresis = Hysteresis(patience, start_armed=False)

    def check(self, history: MetricHistory, epoch: int, step: int) -> list[Alert]:
        snap = history.latest
        if snap is None or snap.epoch < self.min_epoch:
            return []
        alerts = []
        for layer, record in snap.classes.items():
            if not self.selects(layer, None):
                continue
            for key, value in record.metrics.items():
                if not key.startswith(self.prefix) or not math.isfinite(value):
                    continue
                label = key[len(self.prefix):]
                holds = self.holds(record.metrics, label, value)
                if self._hysteresis.update((layer, label), holds):
                    alerts.append(self.make_alert(
                        layer=layer, metric=key, value=value, threshold=0.0,
                        epoch=snap.epoch, step=snap.step,
                        message=(f"{self.name}: layer {layer!r} class {label} {self.what}"
                                 f"{when(snap.epoch, snap.step)}"),
                    ))
        return alerts

    def holds(self, metrics: Mapping[str, float], label: str, value: float) -> bool | None:
        """True: the count is 0 (the condition); False: at least ``min_count`` (re-arms);
        None: no evidence."""
        return True if value <= 0 else False if value >= self.min_count else None

    def state_dict(self) -> dict[str, Any]:
        return {"hysteresis": self._hysteresis.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._hysteresis.load_state_dict(state.get("hysteresis", []))


class ClassLostSpecificNeurons(_PerClassCountRule):
    """A class lost all its class-specific neurons in a layer, after having owned at least
    ``min_count`` of them: none of the neurons that were specific to it in the previous analysis
    is specific to it now. Neurons are followed by their singular vectors
    (``specific_retained/<c>``, docs/methods.md#class-statistics): a class whose specific
    neurons were all replaced by other vectors lost them even when its count did not drop.
    Records without ``specific_retained/<c>`` (a first analysis) fall back to the count: 0
    specific neurons.

    The condition holds when ``specific_retained/<c>`` is 0 (or, without it, when
    ``specific_neurons/<c>`` is 0); a count >= ``min_count`` with at least one kept neuron
    re-arms the rule; anything else is no evidence.

    ``min_count`` defaults to 2 because single specific neurons come and go: in a healthy
    Fashion-MNIST run of the example CNN (top 32 neurons, tau = 0.5) the hyperedges held 1-9
    neurons and every class had 0 or 1 specific neuron, flipping between the two from epoch to
    epoch; with ``min_count=1`` the rule raised 7 alerts in 6 healthy epochs.

    Args:
        patience: consecutive analyses at 0 needed.
        min_count: specific neurons the class must have had (in one analysis) to arm the rule.
        min_epoch: first epoch considered (default 1).
        **kwargs: ``name``, ``action``, ``layers`` (see :class:`Rule`).
    """

    prefix = "specific_neurons/"
    meaning = ("the class no longer owns neurons of its own in the layer: its features merged "
               "with other classes'")
    advice = "compare with that class's validation accuracy"
    what = ("lost all its class-specific neurons (none of its previous specific neurons, "
            "followed by their singular vectors, is specific to it now)")
    default_min_count = 2

    def holds(self, metrics: Mapping[str, float], label: str, value: float) -> bool | None:
        retained = metrics.get(f"specific_retained/{label}", math.nan)
        if not math.isfinite(retained):
            return super().holds(metrics, label, value)
        if retained <= 0:
            return True
        return False if value >= self.min_count else None


class ClassFeaturesEmpty(_PerClassCountRule):
    """A class's set S_c of class-specific penultimate features became empty: its probe images
    no longer activate any penultimate feature (dead units for that class), after having had
    some.

    Args:
        patience: consecutive analyses with an empty S_c needed.
        min_count: |S_c| the class must have had to arm the rule (default 1).
        min_epoch: first epoch considered (default 1).
        **kwargs: ``name``, ``action``, ``layers`` (see :class:`Rule`).
    """

    prefix = "feature_count/"
    meaning = "the class's images no longer activate any penultimate feature (dead units)"
    advice = "look for dead units (a too-high learning rate) and at that class's accuracy"
    what = "has no class-specific feature left (S_c is empty)"


class FactorizationRankCollapse(RankCollapse):
    """The factorization rank of a layer's activations fell by more than ``drop_fraction``
    below its maximum (Saini & Papalexakis, docs/methods.md: the activations of the probe
    have lost components).

    Args:
        drop_fraction: the condition holds when rank < (1 - drop_fraction) * reference.
        reference: ``"max"`` (default) or ``"first"``.
        patience: consecutive analyses the condition must hold (default 1).
        **kwargs: ``name``, ``action``, ``layers``, ``min_epoch`` (see :class:`Rule`).
    """

    source = "classes"
    meaning = "the probe's activations in the layer lost components (dead or merged units)"
    advice = "look for dead units; compare with the validation accuracy"

    def __init__(
        self, drop_fraction: float = 0.5, reference: str = "max", *, patience: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__("factorization_rank", drop_fraction, reference, patience=patience,
                         **kwargs)


def default_class_rules() -> list[Rule]:
    """The class rules of the class analysis, with their default thresholds:
    :class:`ClassFeaturesEmpty` logs; :class:`ClassLostSpecificNeurons` and
    :class:`FactorizationRankCollapse` report as information (the first fired on a healthy
    run, the second hardly separates poorly trained nets from healthy ones).
    :class:`ClassOverlapRising` is opt-in: it fires on healthy and shuffled-label runs alike
    (``docs/methods.md``)."""
    return [
        ClassLostSpecificNeurons(action="info"),
        ClassFeaturesEmpty(),
        FactorizationRankCollapse(action="info"),
    ]
