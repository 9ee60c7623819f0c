"""The class analysis driver: the number of classes comes from the probe's labels or a declared
``num_classes``, never from the order of the model's modules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from svd_callback.classes import ClassAnalysisConfig, ProbeSet, analyze_classes


class HeadFirstTransformer(nn.Module):
    """A classifier whose head is declared before its encoder: the last ``nn.Linear`` in module
    order is the encoder's ``linear2`` (8 outputs, d_model), not the 3-class head."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.embed = nn.Linear(4, 8)
        self.encoder = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16,
                                                  dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def probe(classes: int = 3, per_class: int = 6) -> ProbeSet:
    torch.manual_seed(0)
    n = classes * per_class
    return ProbeSet(torch.randn(n, 5, 4), torch.arange(n) % classes, torch.arange(n))


def test_the_class_count_comes_from_the_labels_not_the_last_linear():
    torch.manual_seed(0)
    model = HeadFirstTransformer()
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert last_linear == "encoder.linear2" and model.encoder.linear2.out_features == 8
    report = analyze_classes(model, probe())
    assert report.num_classes == 3
    assert report.class_counts.tolist() == [6, 6, 6]
    assert not any(key.startswith("class ") for key in report.reasons), report.reasons
    for layer in ("head", "embed", "encoder.linear1", "encoder.linear2"):
        assert report.jaccard[layer].shape == (3, 3)
        assert report.specific_neurons[layer].shape == (3,)
        assert math.isfinite(report.layers[layer]["jaccard_mean"]), layer
    assert report.feature_fraction.shape == (3,)


def test_a_declared_class_count_keeps_classes_absent_from_the_probe():
    torch.manual_seed(0)
    report = analyze_classes(HeadFirstTransformer(), probe(),
                             ClassAnalysisConfig(num_classes=5))
    assert report.num_classes == 5 and report.class_counts.tolist() == [6, 6, 6, 0, 0]
    assert report.reasons["class 3"] == report.reasons["class 4"] == (
        "class absent from the probe set")
    specific = report.specific_neurons["head"]
    assert torch.isnan(specific[3:]).all() and torch.isfinite(specific[:3]).all()


def test_a_label_beyond_the_declared_count_is_a_reason_not_an_exception():
    report = analyze_classes(HeadFirstTransformer(), probe(),
                             ClassAnalysisConfig(num_classes=2))
    assert report.reasons["probe"].startswith("probe label 2 >= num_classes = 2")
    assert report.layers == {}


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_num_classes_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="num_classes"):
        ClassAnalysisConfig(num_classes=bad)


def test_the_split_modules_keep_every_public_name_where_callers_import_it():
    import svd_callback.classes as classes
    from svd_callback.classes import analysis, config, probe, report

    before_split = {
        "ClassAnalysisConfig", "ClassReport", "ClassTracker", "analyze_classes", "ClassFeatures",
        "ClassMeans", "ConvParams", "FactorizationResult", "HypergraphStats", "NeuronSignals",
        "ProbeSet", "bound_tensor", "capture_activations", "class_hyperedges",
        "class_mean_signals", "class_specific_features", "corcondia", "dataset_labels",
        "factorization_rank", "find_penultimate_layer", "hypergraph_stats", "incidence_matrix",
        "jaccard", "mass_counts", "neuron_signals", "pool_features", "select_probe",
        "to_hypernetx",
    }
    assert before_split <= set(classes.__all__)
    assert all(hasattr(classes, name) for name in classes.__all__)
    homes = {
        "ClassAnalysisConfig": config, "ClassReport": report, "ClassTracker": report,
        "ProbeError": probe, "split_batch": probe, "probe_from_loader": probe,
        "probe_at_positions": probe,
    }
    for name, home in homes.items():  # the old import path gives the same object
        assert getattr(analysis, name) is getattr(home, name), name


def test_reasons_are_keyed_by_typed_places_that_read_as_the_history_text():
    import json
    import pickle

    from svd_callback.classes.report import Part, Where
    from svd_callback.sinks.history import to_json

    where = Where.layer("features.0")
    assert (where.part, where.name) == (Part.LAYER, "features.0") and where == "layer features.0"
    copy = pickle.loads(pickle.dumps(where))  # gathered across ranks
    assert (copy.part, copy.name, str(copy)) == (Part.LAYER, "features.0", "layer features.0")
    assert Where(Part.CLASS, 3) == "class 3" and Where(Part.PROBE) == "probe"
    assert json.dumps(to_json({where: "x"})) == '{"layer features.0": "x"}'
