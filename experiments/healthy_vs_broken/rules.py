"""This experiment's alert rule set, built from the library's public rule classes.

See ``RULE_SET_NOTES`` (copied into RESULTS.md) for what differs from ``default_rules()`` and why.
"""

from __future__ import annotations

from typing import Any

from svd_callback.alerts import LayerMetricRule, default_rules
from svd_callback.alerts.base import fmt


class StalledLayer(LayerMetricRule):
    """A layer whose weights did not move: ``metric`` (default ``frobenius_norm``) changed by a
    relative amount below ``tolerance`` since the previous analysis, from epoch ``min_epoch`` on.

    Any optimiser step of a trained layer changes its Frobenius norm far beyond float32
    rounding (relative ~1e-7); an unchanged norm over a whole epoch means the layer received no
    update (frozen by mistake, zero learning rate, or every gradient zero: dead units).

    Args:
        tolerance: relative change below which the layer counts as stalled.
        patience: consecutive analyses the condition must hold.
        **kwargs: ``name``, ``action``, ``modes``, ``layers``, ``min_epoch`` (see ``Rule``).
    """

    def __init__(self, tolerance: float = 1e-6, patience: int = 1, *,
                 metric: str = "frobenius_norm", min_epoch: int = 1, **kwargs: Any) -> None:
        super().__init__(metric, patience=patience, min_epoch=min_epoch, **kwargs)
        self.tolerance = float(tolerance)

    def _previous(self, history, layer: str, mode: str) -> float | None:
        values = history.last_values(layer, self.metric, mode, 2)
        return values[0] if len(values) == 2 and values[0] > 0 else None

    def condition(self, history, layer, mode, value):
        previous = self._previous(history, layer, mode)
        return None if previous is None else abs(value / previous - 1.0) < self.tolerance

    def describe(self, history, layer, mode, value):
        previous = self._previous(history, layer, mode) or float("nan")
        return (f"changed by {fmt(abs(value / previous - 1.0))} (relative) since the previous "
                f"analysis (limit {fmt(self.tolerance)}): the layer is not being trained",
                self.tolerance)


def experiment_rules() -> list[Any]:
    """``default_rules()`` plus :class:`StalledLayer`."""
    return [*default_rules(), StalledLayer()]


RULE_SET_NOTES = """\
Rule sets. `default`: `svd_callback.alerts.default_rules()` unchanged (NonFiniteWeights stops;
AlphaBelow, AlphaAbove, SpectralNormGrowth, RankCollapse on matrix_rank, TrapsAppeared and
MeanAlphaTrend log). `experiment`: the default rules plus `StalledLayer` (rules.py): a layer whose
Frobenius norm changed by less than 1e-6 (relative) over an epoch is not being trained."""
