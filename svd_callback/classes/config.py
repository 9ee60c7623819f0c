"""Options of the class-level analysis (docs/methods.md#class-statistics)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["EDGE_RULES", "ClassAnalysisConfig"]

EDGE_RULES = ("influential", "mean_share")
"""Class hyperedge constructions (:attr:`ClassAnalysisConfig.edge_rule`)."""


@dataclass(frozen=True)
class ClassAnalysisConfig:
    """Options of the class-level analysis.

    Args:
        probe_size: images in the class-stratified probe (chosen once).
        edge_rule: how the class hyperedges are built. ``"influential"`` (default):
            e_c = the neurons DeepDataProfiler-influential (``influence_threshold``) in at least
            the fraction ``q`` of class c's probe images, over every neuron of the layer.
            ``"mean_share"``: the earlier rule on the ``top_k`` neurons (``tau`` or ``m``), its
            hypergraph statistics logged with the suffix ``_mean_share``.
        influence_threshold: DeepDataProfiler's threshold, the cumulative share of an image's
            |signal| its influential neurons hold (plus one).
        q: the fraction of a class's images in which a neuron must be influential to be in its
            hyperedge (0.5, a majority, chosen on a pilot run: docs/methods.md).
        top_k: SVD-neurons (largest sigma) per layer, the nodes of ``edge_rule="mean_share"``.
        layers: names of the layers to analyse (None: every monitored conv and linear layer).
            Cost per layer and analysis: one SVD of its unfolded weight and one pass over its
            probe input, O(I * c * k^2 * H * W) for a conv; on the digits CNN the whole
            analysis of its five layers takes about 60 ms for 256 images on 2 CPU threads.
        tau: ``edge_rule="mean_share"``: hyperedge e_c = the smallest set of neurons holding the
            share ``tau`` of class c's mean |signal| (used when ``m`` is None).
        m: ``edge_rule="mean_share"``: hyperedge e_c = the ``m`` neurons of largest mean |signal|
            (instead of ``tau``).
        feature_mass: the mass k of Badola et al.'s class-specific features.
        functional_draws: random same-size feature sets drawn by the functional test.
        feature_layer: module whose *input* holds the penultimate features (None: the last
            ``nn.Linear``, see :func:`find_penultimate_layer`).
        factorization_every_n: factorization rank every n analyses (0: never, the default).
        factorization_layers: modules whose rectified *outputs* are factorised (None: the last
            analysed conv layer).
        factorization_max_rank: largest CP rank tried.
        batch_size: probe images per forward pass.
        probe_batches: at most this many validation batches are read to choose the probe
            (None: all).
        seed: seed of the private generators (probe choice, factorization starts).
        num_classes: the number of classes C of the task (None: the largest probe label + 1).
            Declare it when the highest classes may be absent from the probe: the count never
            comes from the model (the last ``nn.Linear`` need not be the classifier head).

    Raises:
        ValueError: on any invalid option, naming it and the value given.
    """

    probe_size: int = 256
    edge_rule: str = "influential"
    influence_threshold: float = 0.1
    q: float = 0.5
    top_k: int = 32
    layers: tuple[str, ...] | None = None
    tau: float | None = 0.5
    m: int | None = None
    feature_mass: float = 0.5
    functional_draws: int = 20
    feature_layer: str | None = None
    factorization_every_n: int = 0
    factorization_layers: tuple[str, ...] | None = None
    factorization_max_rank: int = 6
    batch_size: int = 256
    probe_batches: int | None = None
    seed: int = 0
    num_classes: int | None = None

    def __post_init__(self) -> None:
        for name, low in (("probe_size", 1), ("top_k", 1), ("factorization_every_n", 0),
                          ("factorization_max_rank", 1), ("batch_size", 1), ("seed", 0),
                          ("functional_draws", 1)):
            _check_int(name, getattr(self, name), low)
        if self.probe_batches is not None:
            _check_int("probe_batches", self.probe_batches, 1)
        if self.num_classes is not None:
            _check_int("num_classes", self.num_classes, 1)
        if self.m is not None:
            _check_int("m", self.m, 1)
            object.__setattr__(self, "tau", None)
        elif self.tau is None or not 0.0 < float(self.tau) <= 1.0:
            raise ValueError(f"tau must be in (0, 1] (or give m), got {self.tau!r}")
        if self.edge_rule not in EDGE_RULES:
            raise ValueError(f"edge_rule must be one of {EDGE_RULES}, got {self.edge_rule!r}")
        if not 0.0 <= float(self.influence_threshold) <= 1.0:
            raise ValueError(f"influence_threshold must be in [0, 1], got "
                             f"{self.influence_threshold!r}")
        if not 0.0 < float(self.q) <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {self.q!r}")
        if not 0.0 < float(self.feature_mass) <= 1.0:
            raise ValueError(f"feature_mass must be in (0, 1], got {self.feature_mass!r}")
        for name in ("layers", "factorization_layers"):
            value = getattr(self, name)
            if value is None:
                continue
            names = (value,) if isinstance(value, str) else tuple(value)
            if not names or any(not isinstance(n, str) or not n for n in names):
                raise ValueError(f"{name} must hold non-empty layer names, got {value!r}")
            object.__setattr__(self, name, names)
        if self.feature_layer is not None and (
            not isinstance(self.feature_layer, str) or not self.feature_layer
        ):
            raise ValueError(f"feature_layer must be a layer name or None, got "
                             f"{self.feature_layer!r}")

    @classmethod
    def coerce(cls, value: bool | ClassAnalysisConfig | Mapping[str, Any] | None
               ) -> ClassAnalysisConfig | None:
        """None for ``False``/None, the defaults for ``True``, a config from a mapping of
        options (a YAML section).

        Raises:
            ValueError: an unknown option or a value of another type.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"class_analysis has unknown options {unknown}; known: "
                                 f"{sorted(known)}")
            return cls(**dict(value))
        raise ValueError(f"class_analysis must be a bool, a ClassAnalysisConfig or a mapping of "
                         f"its options, got {value!r}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
