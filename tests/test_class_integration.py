"""The class-level analysis wired into ``analyze(probe=...)`` and ``SpectralMonitor``: values
against brute-force oracles, what the callback logs and keeps for resume, that it leaves training
bit-identical, bad input, and the class alert rules on planted sequences."""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from svd_callback.alerts import (
    AlertEngine,
    ClassFeaturesEmpty,
    ClassLostSpecificNeurons,
    ClassOverlapRising,
    FactorizationRankCollapse,
    default_class_rules,
)
from svd_callback.analysis import analyze
from svd_callback.callback import SpectralMonitor
from svd_callback.classes.analysis import (
    ClassAnalysisConfig,
    ClassTracker,
    ProbeError,
    analyze_classes,
    probe_from_loader,
    split_batch,
)
from svd_callback.classes.probe import ProbeSet
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.sinks.history import read_history

BATCHES = 6
LAYERS = ["features.0", "features.2", "features.5", "hidden", "classifier"]


def trainer_for(root: Path, callbacks=(), logger=False, max_epochs: int = 2, **kwargs):
    options = dict(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=logger,
        callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=root, limit_train_batches=BATCHES,
        limit_val_batches=2, num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


@pytest.fixture(scope="module")
def digits():
    data = DigitsDataModule(batch_size=64)
    data.setup()
    return data


@pytest.fixture(scope="module")
def trained(digits):
    """A SmallCNN after two epochs of plain training, and a 200-image validation probe."""
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(digits.train_set, batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    probe = probe_from_loader(digits.val_dataloader(), size=200, seed=0)
    return model, probe


# ---------------------------------------------------------------------------- oracles
def _inputs_of(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    captured = []
    handle = dict(model.named_modules())[name].register_forward_hook(
        lambda m, args, out: captured.append(args[0].detach().double()))
    try:
        with torch.no_grad():
            model.eval()
            model(x)
    finally:
        handle.remove()
        model.train()
    return captured[0]


def _oracle_edges(model, name, probe, top_k=32, tau=0.5) -> dict[int, frozenset[int]]:
    """Hyperedges from the dense SVD of the unfolded weight and F.unfold patches (float64)."""
    module = dict(model.named_modules())[name]
    x = _inputs_of(model, name, probe.inputs)
    weight = module.weight.detach().double()
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(x, module.kernel_size, padding=module.padding, stride=module.stride)
        x = patches.mean(dim=2)
        weight = weight.reshape(weight.shape[0], -1)
    _, sigma, vh = torch.linalg.svd(weight, full_matrices=False)
    signals = ((x @ vh.T) * sigma)[:, :top_k].abs().numpy()
    labels = probe.labels.numpy()
    edges = {}
    for c in np.unique(labels):
        means = signals[labels == c].mean(axis=0)
        order = sorted(range(len(means)), key=lambda i: (-means[i], i))
        total, running, members = means.sum(), 0.0, []
        for i in order:
            members.append(i)
            running += means[i]
            if running >= tau * total * (1 - 1e-9):
                break
        edges[int(c)] = frozenset(members)
    return edges


def _jaccard_mean(edges) -> float:
    pairs = [len(edges[a] & edges[b]) / len(edges[a] | edges[b])
             for a, b in combinations(sorted(edges), 2)]
    return sum(pairs) / len(pairs)


def _oracle_feature_fraction(h: np.ndarray, labels: np.ndarray, mass=0.5) -> dict[int, float]:
    """Badola et al.'s |S_c| / D, written out with loops."""
    n_features = h.shape[1]
    out = {}
    for c in np.unique(labels):
        rows = h[labels == c]
        counts = []
        for row in rows:
            shares = np.sort(row / row.sum())[::-1]
            counts.append(int(np.argmax(np.cumsum(shares) >= mass * (1 - 1e-6))) + 1)
        kbar = int(np.floor(np.mean(counts)))
        votes = np.zeros(n_features)
        for row in rows:
            votes[np.argsort(-row, kind="stable")[:kbar]] += 1
        order = np.argsort(-votes, kind="stable")
        reached = np.cumsum(votes[order]) / votes.sum() >= mass * (1 - 1e-6)
        out[int(c)] = (int(np.argmax(reached)) + 1) / n_features
    return out


def test_analyze_with_a_probe_matches_brute_force_hyperedges_and_features(trained):
    model, probe = trained
    report = analyze(model, probe=probe, class_options=ClassAnalysisConfig(top_k=32,
                                                                       edge_rule="mean_share"))
    classes = report.classes
    assert [r.name for r in report] == LAYERS and classes is not None
    assert classes.reasons == {} and classes.num_classes == 10
    for name in ("features.5", "hidden"):
        expected = _oracle_edges(model, name, probe)
        assert classes.edges[name] == expected, name
        assert classes.layers[name]["jaccard_mean_mean_share"] == pytest.approx(
            _jaccard_mean(expected))
        matrix = classes.jaccard[name]
        assert matrix.shape == (10, 10) and torch.allclose(matrix, matrix.T)
        degree = {i: sum(i in e for e in expected.values()) for i in range(32)}
        specific = [sum(degree[i] == 1 for i in expected[c]) for c in range(10)]
        assert classes.specific_neurons[name].tolist() == specific
    h = _inputs_of(model, "classifier", probe.inputs).numpy()
    fractions = _oracle_feature_fraction(h, probe.labels.numpy())
    assert classes.feature_layer == "classifier" and classes.n_features == 64
    assert classes.feature_fraction.tolist() == pytest.approx([fractions[c] for c in range(10)])
    assert classes.layers["classifier"]["feature_fraction_mean"] == pytest.approx(
        np.mean(list(fractions.values())))
    # no edge stability without a previous analysis; with a tracker it is 1 on the same weights
    assert math.isnan(classes.layers["hidden"]["edge_stability_mean_mean_share"])
    tracker = ClassTracker()
    for _ in range(2):
        again = analyze_classes(model, probe, tracker=tracker)
    assert again.layers["hidden"]["edge_stability_mean"] == 1.0
    assert again.layers["classifier"]["feature_jaccard_previous_mean"] == 1.0
    assert analyze(model).classes is None


def test_the_class_pass_leaves_modes_batchnorm_and_random_generators_alone():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    model.train()
    model[3].eval()
    probe = ProbeSet(torch.randn(30, 1, 6, 6), torch.arange(30) % 3, torch.arange(30))
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    report = analyze_classes(model, probe, ClassAnalysisConfig(top_k=4, factorization_every_n=1,
                                                               factorization_max_rank=2))
    assert torch.equal(rng, torch.get_rng_state())
    assert modes == {n: m.training for n, m in model.named_modules()}
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert set(report.layers) == {"0", "6", "8"} and report.feature_layer == "8"
    assert math.isfinite(report.layers["0"]["factorization_fit"])


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_give_reasons_and_the_rest_still_runs(trained):
    model, probe = trained
    without_3 = probe.labels != 3
    partial = ProbeSet(probe.inputs[without_3], probe.labels[without_3], probe.indices[without_3])
    report = analyze_classes(model, partial)
    assert report.reasons == {"class 3": "class absent from the probe set"}
    assert report.num_classes == 10 and math.isnan(report.jaccard["hidden"][3, 0])
    assert math.isnan(report.specific_neurons["hidden"][3])
    assert math.isnan(report.feature_fraction[3]) and math.isfinite(report.feature_fraction[4])
    assert math.isfinite(report.layers["hidden"]["jaccard_mean"])
    assert report.record_metrics()["hidden"]["specific_neurons/4"] >= 0

    regression = ProbeSet(probe.inputs, probe.labels.double(), probe.indices)
    report = analyze_classes(model, regression)
    assert "not integer class labels" in report.reasons["probe"] and report.layers == {}

    convs_only = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 3),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten())
    report = analyze_classes(convs_only, probe)
    assert "penultimate layer not found" in report.reasons["features"]
    assert math.isfinite(report.layers["2"]["jaccard_mean"]) and report.feature_layer is None

    binary = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
    report = analyze_classes(binary, probe)
    assert "single output" in report.reasons["features"]
    assert math.isfinite(report.layers["1"]["jaccard_mean"])

    wrong_shape = ProbeSet(torch.zeros(10, 3, 8, 8), torch.arange(10), torch.arange(10))
    report = analyze_classes(model, wrong_shape)
    assert report.reasons["probe"].startswith("probe forward pass failed: RuntimeError")
    assert "no class statistics" in analyze_classes(
        model, ProbeSet(torch.empty(0), torch.empty(0, dtype=torch.int64),
                        torch.empty(0, dtype=torch.int64))).reasons["probe"]


def test_batch_formats():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    for batch in ((x, y), [x, y, torch.ones(4)], {"image": x, "label": y, "id": torch.arange(4)}):
        inputs, targets = split_batch(batch)
        assert inputs is x and torch.equal(targets, y)
    for batch, message in (
        ({"pixels": x, "label": y}, "input key"),
        (x, "cannot read"),
        ((x,), "cannot read"),
        ((x, y.float()), "not integer class labels"),
        ((x, F.one_hot(y, 3)), "one-hot"),
    ):
        with pytest.raises(ProbeError, match=message):
            split_batch(batch)
    with pytest.raises(ProbeError, match="no example"):
        probe_from_loader([])


class _Dicts(Dataset):
    def __init__(self, base: TensorDataset, float_targets: bool = False) -> None:
        self.base, self.float_targets = base, float_targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return {"image": x, "label": y.float() if self.float_targets else y, "index": i}


def test_callback_bad_inputs_one_warning_and_training_goes_on(tmp_path, digits):
    train = DataLoader(digits.train_set, batch_size=64)

    def run(name, val):
        monitor = SpectralMonitor(class_analysis=True, figures_every_n=0,
                                  per_layer_callback_metrics=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = trainer_for(tmp_path / name, [monitor], max_epochs=1, limit_val_batches=0)
            trainer.fit(SmallCNN(), train, val)
        text = [str(w.message) for w in caught if "class analysis" in str(w.message)]
        return monitor, trainer, text

    # no validation data at all
    monitor, trainer, text = run("none", None)
    assert len([t for t in text if "disabled" in t]) == 1 and "no validation" in text[0]
    assert "spectral/alpha/hidden" in trainer.callback_metrics
    assert not [k for k in trainer.callback_metrics if k.startswith("classes/")]
    assert monitor.schedule.analyses == 2 and trainer.current_epoch == 1
    # regression targets (floating point)
    _, trainer, text = run("float", DataLoader(_Dicts(digits.val_set, True), batch_size=64))
    assert len(text) == 1 and "not integer class labels" in text[0]
    # dict batches with input and target keys are read
    monitor, trainer, text = run("dicts", DataLoader(_Dicts(digits.val_set), batch_size=64))
    assert text == [] and len(monitor.classes.probe) == 256
    assert math.isfinite(float(trainer.callback_metrics["classes/jaccard_mean/hidden"]))


# ---------------------------------------------------------------------------- callback
def test_callback_logs_class_statistics_figures_and_history(tmp_path, digits, read_events):
    monitor = SpectralMonitor(class_analysis={"probe_size": 128}, figures_every_n=2)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    pl.seed_everything(0, verbose=False)
    trainer = trainer_for(tmp_path, [monitor], logger, max_epochs=2)
    trainer.fit(SmallCNN(), digits)
    steps = [0, BATCHES, 2 * BATCHES]
    acc = read_events(logger.log_dir)
    scalars = set(acc.Tags()["scalars"])
    for layer in LAYERS:
        for stat in ("jaccard_mean", "jaccard_max", "class_specific_fraction", "degree_mean",
                     "s_components_1"):
            events = acc.Scalars(f"classes/{stat}/{layer}")
            assert [e.step for e in events] == steps, (stat, layer)
            assert all(math.isfinite(e.value) for e in events)
            assert all(0 <= e.value <= 1 for e in events) or not stat.startswith("jaccard")
        stability = acc.Scalars(f"classes/edge_stability_mean/{layer}")
        assert [e.step for e in stability] == steps[1:]  # undefined at the first analysis
    for stat in ("feature_fraction_mean", "selectivity", "feature_count_mean"):
        events = acc.Scalars(f"classes/{stat}/classifier")
        assert [e.step for e in events] == steps and all(e.value > 0 for e in events)
    assert all(e.value < 0.5 for e in acc.Scalars("classes/feature_fraction_mean/classifier"))
    assert not [t for t in scalars if t.startswith("classes/") and "/" in t.split("/", 1)[1]
                and t.count("/") > 2]  # no per-class keys as scalars
    description = acc.SummaryMetadata("classes/jaccard_mean/hidden").summary_description
    assert "class overlap" in description and "128 images" in description
    images = set(acc.Tags()["images"])
    assert {"class_figures/hypergraph/classifier", "class_figures/overlap/classifier"} <= images
    # figures at analyses 0 and 2 (the last one, so nothing more at the end)
    assert [e.step for e in acc.Images("class_figures/overlap/classifier")] == [0, 12]
    layout = layout_pb2.Layout()
    config = acc.Tensors("custom_scalars__config__")[-1].tensor_proto
    layout.ParseFromString(tensor_util.make_ndarray(config).item())
    charts = {c.title: [ch.title for ch in c.chart] for c in layout.category}
    assert "jaccard_mean" in charts["classes"] and "feature_fraction_mean" in charts["classes"]

    rows = read_history(Path(logger.log_dir) / "spectral_history.jsonl")
    class_rows = [r for r in rows if r["type"] == "class"]
    assert sorted((r["step"], r["layer"]) for r in class_rows) == sorted(
        (s, name) for s in steps for name in LAYERS)
    last = [r for r in class_rows if r["step"] == 12 and r["layer"] == "hidden"][0]
    assert last["metrics"]["jaccard_mean"] == pytest.approx(
        acc.Scalars("classes/jaccard_mean/hidden")[-1].value)
    assert len(last["jaccard_matrix"]) == 10 and last["probe_size"] == 128
    summaries = [r for r in rows if r["type"] == "class_summary"]
    assert len(summaries) == 3 and summaries[0]["class_counts"] == [13] * 8 + [12] * 2
    # the logged values are those of an offline analysis of the final weights on the same probe
    offline = analyze_classes(trainer.lightning_module, monitor.classes.probe)
    assert offline.layers["features.5"]["jaccard_mean"] == pytest.approx(
        acc.Scalars("classes/jaccard_mean/features.5")[-1].value, rel=1e-6)


class _DropNormCNN(SmallCNN):
    """SmallCNN with batch norm and dropout: a train-mode pass would change both."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(128)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = self.norm(self.pool(self.features(x)).flatten(1))
        return self.classifier(self.drop(F.relu(self.hidden(h))))


def test_weights_stay_bit_identical_with_the_class_analysis(tmp_path, digits):
    def run(name, callbacks):
        pl.seed_everything(7, verbose=False)
        model = _DropNormCNN()
        model.norm.eval()  # a module in eval mode must stay so
        trainer_for(tmp_path / name, callbacks, max_epochs=2).fit(model, digits)
        return model.state_dict(), torch.get_rng_state(), model.norm.training

    monitor = SpectralMonitor(every_n_steps=4, figures_every_n=0, class_analysis={
        "probe_size": 64, "factorization_every_n": 3, "factorization_max_rank": 2})
    plain_weights, plain_rng, plain_mode = run("plain", [])
    watched_weights, watched_rng, watched_mode = run("watched", [monitor])
    assert monitor.classes.tracker.analyses >= 5
    assert plain_weights.keys() == watched_weights.keys()
    for name, value in plain_weights.items():
        assert torch.equal(value, watched_weights[name]), name
    assert torch.equal(plain_rng, watched_rng) and plain_mode is watched_mode is False


def test_resume_restores_the_probe_and_the_previous_edges(tmp_path, digits):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}",
                                  save_on_train_epoch_end=True)
    logger = dict(save_dir=tmp_path, name="tb", version=0)
    first = SpectralMonitor(class_analysis={"probe_size": 100}, figures_every_n=0)
    pl.seed_everything(0, verbose=False)
    trainer_for(tmp_path, [first, checkpoints], TensorBoardLogger(**logger), max_epochs=2,
                enable_checkpointing=True).fit(SmallCNN(), digits)
    saved = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=True)
    state = saved["callbacks"][first.state_key]["runner"]["classes"]
    assert state["probe"]["indices"] == first.classes.probe.indices.tolist()
    assert state["tracker"]["analyses"] == 2 and set(state["tracker"]["edges"]) == set(LAYERS)

    second = SpectralMonitor(class_analysis={"probe_size": 100}, figures_every_n=0)
    pl.seed_everything(0, verbose=False)
    trainer = trainer_for(tmp_path, [second], TensorBoardLogger(**logger), max_epochs=3)
    trainer.fit(SmallCNN(), digits, ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    assert torch.equal(second.classes.probe.indices, first.classes.probe.indices)
    assert torch.equal(second.classes.probe.inputs, first.classes.probe.inputs)
    assert second.classes.tracker.analyses == 4
    rows = read_history(tmp_path / "tb" / "version_0" / "spectral_history.jsonl")
    class_rows = [r for r in rows if r["type"] == "class"]
    keys = [(r["step"], r["layer"]) for r in class_rows]
    assert len(keys) == len(set(keys)) == 4 * len(LAYERS)
    resumed = [r for r in class_rows if r["step"] == 2 * BATCHES]  # first analysis after resume
    assert all(math.isfinite(r["metrics"]["edge_stability_mean"]) for r in resumed)


# ---------------------------------------------------------------------------- alert rules
def _feed(engine: AlertEngine, sequence: list[dict[str, dict[str, float]]]) -> list[list[str]]:
    fired = []
    for epoch, metrics in enumerate(sequence):
        alerts = engine.update(epoch, 10 * epoch, [], classes=metrics)
        fired.append([f"{a.rule}:{a.layer}:{a.metric}" for a in alerts])
    return fired


def test_overlap_rising_fires_after_patience_rises_and_rearms():
    values = [0.9, 0.5, 0.52, 0.54, 0.56, 0.58, 0.4, math.nan, 0.45, 0.5, 0.55]
    engine = AlertEngine([ClassOverlapRising(patience=3, min_rise=0.0)])
    fired = _feed(engine, [{"hidden": {"jaccard_mean": v}} for v in values])
    expected = [[]] * len(values)
    expected[4] = expected[10] = ["ClassOverlapRising:hidden:jaccard_mean"]
    assert fired == expected
    alert = engine.alerts_so_far[0]
    assert alert.values == pytest.approx((0.5, 0.52, 0.54, 0.56)) and alert.mode is None
    # a rise smaller than min_rise is no rise
    engine = AlertEngine([ClassOverlapRising(patience=2, min_rise=0.05)])
    assert not any(_feed(engine, [{"h": {"jaccard_mean": v}} for v in values[:6]]))


def test_lost_specific_neurons_and_empty_feature_sets_fire_once_per_onset():
    def neurons(*counts):
        return {f"specific_neurons/{c}": v for c, v in enumerate(counts)}

    nan = math.nan
    sequence = [  # classes 0..3 of layer hidden; feature sets of classes 4, 5 at the classifier
        {"hidden": neurons(2, 0, 1, nan)},
        {"hidden": neurons(1, 0, 1, nan)},
        {"hidden": neurons(0, 0, 1, nan), "classifier": {"feature_count/4": 5.0}},
        {"hidden": neurons(0, 0, 0, 3), "classifier": {"feature_count/4": 0.0}},
        {"hidden": neurons(2, 1, nan, 3),
         "classifier": {"feature_count/4": 0.0, "feature_count/5": 0.0}},
    ]

    def engine(min_count=None):
        return AlertEngine([ClassLostSpecificNeurons(min_epoch=0, min_count=min_count),
                            ClassFeaturesEmpty(min_epoch=0)])

    default = engine()
    assert _feed(default, sequence) == [
        [], [],
        ["ClassLostSpecificNeurons:hidden:specific_neurons/0"],  # had 2, then 1 (no evidence), 0
        ["ClassFeaturesEmpty:classifier:feature_count/4"],  # class 2 never had 2 neurons
        [],  # class 0 re-armed; class 1 never had any; class 5 never had features
    ]
    assert _feed(engine(min_count=1), sequence)[3] == [
        "ClassLostSpecificNeurons:hidden:specific_neurons/2",
        "ClassFeaturesEmpty:classifier:feature_count/4"]
    # the armed state of class 3 survives a checkpoint
    restored = engine()
    restored.load_state_dict(default.state_dict())
    assert _feed(restored, [{}] * 5 + [{"hidden": neurons(1, 1, 1, 0)}])[-1] == [
        "ClassLostSpecificNeurons:hidden:specific_neurons/3"]
    with pytest.raises(ValueError, match="min_count"):
        ClassLostSpecificNeurons(min_count=0)


def test_factorization_rank_collapse_and_the_default_set():
    engine = AlertEngine([FactorizationRankCollapse()])
    ranks = [3, 5, 4, 2, 2, 5, math.nan, 1]
    fired = _feed(engine, [{"features.5": {"factorization_rank": r}} for r in ranks])
    assert [bool(f) for f in fired] == [False, False, False, True, False, False, False, True]
    assert engine.alerts_so_far[0].threshold == 2.5
    actions = {r.name: r.action for r in default_class_rules()}
    assert actions == {"ClassLostSpecificNeurons": "info", "ClassFeaturesEmpty": "log",
                       "FactorizationRankCollapse": "info"}  # ClassOverlapRising: opt-in
    monitor = SpectralMonitor(class_analysis=True)
    assert set(actions) <= {r.name for r in monitor.alert_engine.rules}
    assert "ClassOverlapRising" not in {r.name for r in monitor.alert_engine.rules}
    assert "ClassLostSpecificNeurons" not in {r.name for r in SpectralMonitor().alert_engine.rules}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_analysis": {"top_k": 0}}, "top_k.*0"),
        ({"class_analysis": {"tau": 1.5}}, "tau.*1.5"),
        ({"class_analysis": {"probe": 3}}, "unknown options.*probe"),
        ({"class_analysis": "yes"}, "class_analysis must be.*'yes'"),
        ({"class_analysis": {"factorization_layers": []}}, "factorization_layers"),
        ({"class_probe": [1, 2]}, "class_probe must be a ProbeSet"),
    ],
)
def test_invalid_class_options_name_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpectralMonitor(**kwargs)
