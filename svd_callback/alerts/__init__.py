"""Alerts: rules that read the history of per-layer spectral metrics and raise alerts.

Pure Python, no Lightning and no logging: :class:`AlertEngine` keeps a bounded
:class:`MetricHistory` of the analyses, runs the rules after each one and returns
:class:`Alert` records whose ``severity`` (``"warning"`` or ``"stop"``) tells the caller (the
:class:`~svd_callback.SpectralMonitor` callback) what to do. Every rule has hysteresis: it fires
once when its condition starts holding (after ``patience`` analyses) and re-arms when the
condition clears. NaN/Inf metric values are no evidence either way.

Built-in rules (:func:`default_rules`; only :class:`NonFiniteWeights` stops by default):

- :class:`AlphaBelow` — alpha < 2: over-trained layer (weight-matrix modes).
- :class:`AlphaAbove` — alpha > 6 from epoch 1 on: under-trained layer (weight-matrix modes).
- :class:`SpectralNormGrowth` — spectral norm grew > 3x in one analysis (spectral / Frobenius
  for a layer followed by BatchNorm).
- :class:`RankCollapse` — a rank measure fell > 50% below its maximum.
- :class:`TrapsAppeared` — correlation traps appeared in a layer that had none.
- :class:`NonFiniteWeights` — a layer's weights hold NaN/Inf.
- :class:`MeanAlphaTrend` — model mean alpha < 2 (and optionally falling fast).
- :class:`GeneralizationGap` — validation loss above training loss by > 0.5 (the trainer's
  logged scalars, recorded under the mode ``"training"``; the one rule that reads data).
- :class:`TrainingStalled` — the norms of most layers stopped changing: dead, frozen or
  not-learning network.
- :class:`LayerFrozen` — one layer's norms did not change at all.

Class rules (:func:`default_class_rules`, on the ``"classes"`` records of the class analysis):
:class:`ClassOverlapRising`, :class:`ClassLostSpecificNeurons`, :class:`ClassFeaturesEmpty`,
:class:`FactorizationRankCollapse`.

Custom rules subclass :class:`Rule` or wrap a function in :class:`CallableRule`. A rule's
alert is an event (once per episode); :meth:`AlertEngine.active` lists the :class:`Condition`
objects in force (fired, not cleared), the level behind ``alerts/active``.
"""

from __future__ import annotations

from svd_callback.alerts.base import (
    ACTIONS,
    COUNTED_SEVERITIES,
    SEVERITIES,
    Alert,
    CallableRule,
    Hysteresis,
    Rule,
)
from svd_callback.alerts.class_rules import (
    ClassFeaturesEmpty,
    ClassLostSpecificNeurons,
    ClassOverlapRising,
    FactorizationRankCollapse,
    default_class_rules,
)
from svd_callback.alerts.defaults import monitor_default_rules
from svd_callback.alerts.engine import AlertEngine, default_rules
from svd_callback.alerts.history import LayerSnapshot, MetricHistory, Snapshot
from svd_callback.alerts.layer_rules import (
    AlphaAbove,
    AlphaBelow,
    LayerMetricRule,
    NonFiniteWeights,
    RankCollapse,
    SpectralNormGrowth,
    TrapsAppeared,
)
from svd_callback.alerts.level import Condition
from svd_callback.alerts.model_rules import GeneralizationGap, MeanAlphaTrend
from svd_callback.alerts.stall_rules import (
    LayerFrozen,
    TrainingStalled,
    VanishingUpdates,
    WeightCollapse,
)

__all__ = [
    "ACTIONS",
    "COUNTED_SEVERITIES",
    "SEVERITIES",
    "Alert",
    "AlertEngine",
    "AlphaAbove",
    "AlphaBelow",
    "CallableRule",
    "ClassFeaturesEmpty",
    "ClassLostSpecificNeurons",
    "ClassOverlapRising",
    "Condition",
    "FactorizationRankCollapse",
    "GeneralizationGap",
    "Hysteresis",
    "LayerFrozen",
    "LayerMetricRule",
    "LayerSnapshot",
    "MeanAlphaTrend",
    "MetricHistory",
    "NonFiniteWeights",
    "RankCollapse",
    "Rule",
    "Snapshot",
    "SpectralNormGrowth",
    "TrainingStalled",
    "TrapsAppeared",
    "VanishingUpdates",
    "WeightCollapse",
    "default_class_rules",
    "default_rules",
    "monitor_default_rules",
]
