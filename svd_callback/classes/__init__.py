"""Class-level analysis: probe sets, SVD-neuron signals, class-overlap hypergraphs,
class-specific features and activation factorization rank (docs/methods.md#class-statistics)."""

from __future__ import annotations

from svd_callback.classes.analysis import analyze_classes
from svd_callback.classes.config import ClassAnalysisConfig
from svd_callback.classes.factorization import (
    FactorizationResult,
    bound_tensor,
    corcondia,
    factorization_rank,
)
from svd_callback.classes.features import (
    ClassFeatures,
    class_specific_features,
    find_penultimate_layer,
    mass_counts,
    pool_features,
)
from svd_callback.classes.functional import functional_test
from svd_callback.classes.hypergraph import (
    HypergraphStats,
    class_hyperedges,
    hypergraph_stats,
    incidence_matrix,
    influential_hyperedges,
    jaccard,
    to_hypernetx,
)
from svd_callback.classes.identity import NeuronMatch, component_cosines, match_neurons
from svd_callback.classes.probe import (
    BatchParts,
    ProbeError,
    ProbeSet,
    capture_activations,
    dataset_labels,
    read_batch,
    select_probe,
    split_batch,
)
from svd_callback.classes.report import ClassReport, ClassTracker
from svd_callback.classes.signals import (
    ClassMeans,
    ConvParams,
    NeuronSignals,
    class_mean_signals,
    influential_neurons,
    neuron_signals,
)

__all__ = [
    "ClassAnalysisConfig",
    "ClassReport",
    "ClassTracker",
    "analyze_classes",
    "BatchParts",
    "ClassFeatures",
    "ClassMeans",
    "ConvParams",
    "FactorizationResult",
    "HypergraphStats",
    "NeuronMatch",
    "NeuronSignals",
    "ProbeError",
    "ProbeSet",
    "bound_tensor",
    "capture_activations",
    "class_hyperedges",
    "class_mean_signals",
    "class_specific_features",
    "component_cosines",
    "corcondia",
    "dataset_labels",
    "factorization_rank",
    "find_penultimate_layer",
    "functional_test",
    "hypergraph_stats",
    "incidence_matrix",
    "influential_hyperedges",
    "influential_neurons",
    "jaccard",
    "mass_counts",
    "match_neurons",
    "neuron_signals",
    "pool_features",
    "read_batch",
    "select_probe",
    "split_batch",
    "to_hypernetx",
]
