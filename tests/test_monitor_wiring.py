"""How the callback's parts fit together: the runner calls ``analyze`` with the monitor's own
``AnalysisConfig`` (no deprecated spelling), the history file carries ``normalized_by`` for
replays, the class conventions name the configured hyperedge rule, and every class statistic
has a description."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

import svd_callback
from svd_callback.callback import SpectralMonitor
from svd_callback.classes import ClassAnalysisConfig, ClassTracker, ProbeSet, analyze_classes
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.monitor.class_stage import ClassStage
from svd_callback.monitor.guard import Guard
from svd_callback.sinks.history import read_history
from svd_callback.sinks.history_rows import read_analyses, replay_alerts
from svd_callback.sinks.tags import CLASS_STAT_DESCRIPTIONS

PACKAGE = Path(svd_callback.__file__).resolve().parent


class BatchNormCNN(SmallCNN):
    """SmallCNN with a BatchNorm right after its first conv: ``features.0`` is normalised by
    ``features.1``, no other layer is (by construction)."""

    def __init__(self) -> None:
        super().__init__(width=8, hidden=16)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )


EXPECTED_NORMALIZED_BY = {"features.0": "features.1", "features.3": None, "features.6": None,
                          "hidden": None, "classifier": None}


@pytest.fixture(scope="module")
def monitored_fit(tmp_path_factory):
    """One seeded 2-epoch digits fit of the BatchNorm net, class analysis on; returns the
    history path and every warning raised (all recorded, none filtered)."""
    root = tmp_path_factory.mktemp("wiring")
    history = root / "history.jsonl"
    pl.seed_everything(0, verbose=False)
    monitor = SpectralMonitor(history_file=str(history), class_analysis={"probe_size": 40},
                              histograms=False, figures_every_n=0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, callbacks=[monitor],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=root, limit_train_batches=3, limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(BatchNormCNN(), DigitsDataModule(batch_size=64))
    return history, list(caught)


def test_a_monitored_fit_emits_no_deprecation_warning_from_the_package(monitored_fit):
    """The runner passes the monitor's AnalysisConfig (``config=``), not the legacy
    ``mp_fit=`` / ``traps=`` / ``fit=`` keywords that warn on every analysis."""
    _, caught = monitored_fit
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, DeprecationWarning)
            and (Path(w.filename).resolve().is_relative_to(PACKAGE)
                 or "deprecated" in str(w.message) and "analyze" in str(w.message))]
    assert ours == []


def test_the_fit_analysed_every_layer(monitored_fit):
    history, _ = monitored_fit
    layers = [r for r in read_history(history) if r["type"] == "layer"]
    assert {r["layer"] for r in layers} == set(EXPECTED_NORMALIZED_BY)
    assert all(r["reason"] is None for r in layers)  # no analysis failed (nor warned-as-error)


def test_history_layer_rows_carry_normalized_by_and_the_replay_reads_them(monitored_fit):
    history, _ = monitored_fit
    rows = read_history(history)
    layers = [r for r in rows if r["type"] == "layer"]
    assert {r["layer"]: r["normalized_by"] for r in layers} == EXPECTED_NORMALIZED_BY

    seen: dict[str, str | None] = {}

    def record(metric_history, epoch, step):
        for (name, mode), record in metric_history.latest.layers.items():
            if mode != "classes":  # the class statistics are fed too, as records of no layer
                seen[name] = record.normalized_by
        return []

    replay_alerts(read_analyses(rows), [record])  # no model: from the file alone
    assert seen == EXPECTED_NORMALIZED_BY


def test_class_rows_name_the_edge_rule_settings(monitored_fit):
    history, _ = monitored_fit
    rows = [r for r in read_history(history) if r["type"] == "class"]
    assert rows
    defaults = ClassAnalysisConfig()
    for row in rows:
        assert (row["edge_rule"], row["q"], row["influence_threshold"]) == (
            "influential", defaults.q, defaults.influence_threshold)
        assert (row["top_k"], row["tau"], row["m"]) == (defaults.top_k, defaults.tau, None)


def test_class_conventions_describe_the_influential_rule():
    config = ClassAnalysisConfig(probe_size=40, q=0.75, influence_threshold=0.2)
    stage = ClassStage(config, None, Guard())
    assert stage.conventions() == (
        "fixed class-stratified probe of 40 images, eval mode; all unfold SVD-neurons per layer; "
        "hyperedges: DeepDataProfiler-influential (threshold 0.2) in >= q=0.75 of the class's "
        "images; features: input of the penultimate layer, mass 0.5")
    assert stage.history_fields() == {"probe_size": 0, "top_k": 32, "tau": 0.5, "m": None,
                                      "edge_rule": "influential", "q": 0.75,
                                      "influence_threshold": 0.2}


@pytest.mark.parametrize(("options", "rule"), [({"tau": 0.3}, "tau=0.3"), ({"m": 4}, "m=4")])
def test_class_conventions_describe_the_mean_share_rule(options, rule):
    config = ClassAnalysisConfig(probe_size=40, edge_rule="mean_share", top_k=8, **options)
    stage = ClassStage(config, None, Guard())
    assert stage.conventions() == (
        f"fixed class-stratified probe of 40 images, eval mode; mean_share: top-8 unfold "
        f"SVD-neurons per layer, hyperedges {rule}; features: input of the penultimate layer, "
        f"mass 0.5")
    assert stage.history_fields()["edge_rule"] == "mean_share"


def _produced_statistics(edge_rule: str) -> set[str]:
    """Every statistic name two class analyses (the second with a previous one to compare to,
    factorization on) put in their reports: layer statistics and per-class ``<stat>/<c>``."""
    torch.manual_seed(0)
    model = SmallCNN(width=4, hidden=8).eval()
    probe = ProbeSet(torch.randn(30, 1, 8, 8), torch.arange(30) % 3, torch.arange(30))
    config = ClassAnalysisConfig(probe_size=30, edge_rule=edge_rule, top_k=4,
                                 factorization_every_n=1, factorization_max_rank=2)
    tracker = ClassTracker()
    names: set[str] = set()
    for _ in range(2):
        report = analyze_classes(model, probe, config, tracker=tracker)
        for stats in report.record_metrics().values():
            names |= {name.split("/")[0] for name in stats}
        with torch.no_grad():
            model.classifier.weight.mul_(1.1)
    return names


@pytest.mark.parametrize("edge_rule", ["influential", "mean_share"])
def test_every_class_statistic_has_a_description(edge_rule):
    produced = _produced_statistics(edge_rule)
    assert {"neuron_match_cosine", "functional_gain_first", "specific_retained",
            "factorization_rank"} <= {n.removesuffix("_mean_share") for n in produced}
    assert edge_rule == "influential" or "jaccard_mean_mean_share" in produced
    assert sorted(produced - set(CLASS_STAT_DESCRIPTIONS)) == []
    for name in produced:
        assert CLASS_STAT_DESCRIPTIONS[name] and CLASS_STAT_DESCRIPTIONS[name] != name
        assert ("mean_share" in CLASS_STAT_DESCRIPTIONS[name]) == name.endswith("_mean_share")
