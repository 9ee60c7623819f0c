"""A healthy and a broken run read through a real TensorBoard server's HTTP API, as its
dashboards read them: the newest ``alerts`` text states the run's state first; the alert and
aggregate charts of CUSTOM SCALARS are margin charts (never smoothed), ``alerts/active`` first,
one chart per rule that fired, the per-layer sections closed with at most five layers a chart;
the Time Series view's two expanded groups (the first two in sorted order) are the alerts and
the aggregates; HPARAMS holds ``alerts/active`` first, the model's validation metrics, only
metrics that exist, the changed settings marked, and no ``hp_metric``.

The broken run's condition is planted (a rule that holds for layer ``hidden`` from epoch 1 on),
so that the state is known exactly; the runs are tiny digits fits."""

from __future__ import annotations

import re
import urllib.parse

import lightning.pytorch as pl
import pytest
from helpers import http_json, tensorboard_server
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from svd_callback import SpectralMonitor
from svd_callback.alerts import Hysteresis, Rule
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.monitor.scalars import LAYERS_PER_CHART

START_TIMEOUT_S = 90
RUNS = ("broken", "healthy")


class Planted(Rule):
    """Holds for layer ``hidden`` from ``epoch`` on (a condition in force, with meaning and
    advice), as a real rule with hysteresis does."""

    meaning = "a planted condition"
    advice = "look at the planted layer"

    def __init__(self, epoch: int) -> None:
        super().__init__(name="Planted")
        self.epoch = epoch
        self._hysteresis = Hysteresis(1)

    def check(self, history, epoch, step):
        holds = epoch >= self.epoch
        if not self._hysteresis.update(("hidden", "unfold"), holds):
            return []
        return [self.make_alert(layer="hidden", mode="unfold", metric="planted", value=3.0,
                                threshold=2.0, epoch=epoch, step=step,
                                message=f"Planted: layer 'hidden' planted = 3 > 2 at epoch "
                                f"{epoch} (step {step})")]


def _fit(root, name: str, from_epoch: int, lr: float) -> str:
    pl.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(str(root), name=name, version="")
    monitor = SpectralMonitor(alert_rules=[Planted(from_epoch)], figures_every_n=0,
                              histograms=False, history_file=None)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1,
                         num_sanity_val_steps=0, log_every_n_steps=1, logger=logger,
                         callbacks=[monitor], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(SmallCNN(width=8, lr=lr), datamodule=DigitsDataModule())
    return logger.log_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("glance")
    dirs = {"broken": _fit(root, "broken", 1, 0.05), "healthy": _fit(root, "healthy", 99, 3e-3)}
    return root, dirs


@pytest.fixture(scope="module")
def server(runs):
    root, _ = runs

    def ready(port: int) -> bool:
        tags = http_json(port, "/data/plugin/scalars/tags")
        texts = http_json(port, "/data/plugin/text/tags")
        return set(RUNS) <= set(tags) and all("alerts" in texts.get(r, []) for r in RUNS)

    with tensorboard_server(root, ready, "both runs", START_TIMEOUT_S) as port:
        yield port


def _get(port: int, path: str, **query):
    return http_json(port, f"{path}?{urllib.parse.urlencode(query)}" if query else path)


def _last(port: int, run: str, tag: str) -> float:
    return _get(port, "/data/plugin/scalars/scalars", run=run, tag=tag)[-1][2]


def test_the_newest_alerts_text_states_the_state_first(server):
    entries = {run: sorted(_get(server, "/data/plugin/text/text", run=run, tag="alerts"),
                           key=lambda e: e["step"]) for run in RUNS}
    newest = entries["broken"][-1]["text"]
    head = newest.split("</p>")[0]
    assert "<strong>1 alert rule in force: Planted</strong>" in head
    assert "in force since epoch 1" in newest and "layer hidden [unfold]" in newest
    assert "planted = 3 &gt; 2" in newest  # the numbers against the limit
    assert "<em>Likely:</em> a planted condition" in newest
    assert "<em>Try:</em> look at the planted layer" in newest
    assert "<table>" not in newest  # the rules table is given once
    assert "<table>" in entries["broken"][0]["text"] and entries["broken"][0]["step"] == 0
    healthy = entries["healthy"][-1]["text"]
    assert healthy.startswith("<p><strong>Healthy</strong>: no alert condition in force")
    assert _last(server, "broken", "alerts/active") == 1.0
    assert _last(server, "healthy", "alerts/active") == 0.0


def test_custom_scalars_put_unsmoothed_alert_charts_first(server):
    layout = http_json(server, "/data/plugin/custom_scalars/layout")
    categories = {c["title"]: c for c in layout["category"]}
    titles = [c["title"] for c in layout["category"]]
    assert titles[:3] == ["alerts", "alerts by rule", "all layers [unfold]"]
    (active,) = categories["alerts"]["chart"]
    assert active["margin"]["series"] == [
        {"value": "alerts/active", "lower": "alerts/active", "upper": "alerts/total"}]
    (rule,) = categories["alerts by rule"]["chart"]
    assert rule["title"] == "Planted: alerts raised so far" and "margin" in rule
    summary = categories["all layers [unfold]"]
    assert not summary.get("closed") and all("margin" in c for c in summary["chart"])
    # TensorBoard shows margin charts in reverse: the key metrics come first on screen
    assert summary["chart"][-1]["title"] == "alpha_mean"
    per_layer = [c for c in layout["category"] if c["title"].endswith(" [unfold]")
                 and not c["title"].startswith("all layers")]
    assert per_layer and all(c.get("closed") for c in per_layer)
    assert [c["title"] for c in per_layer][:3] == ["alpha [unfold]", "stable_rank [unfold]",
                                                   "spectral_norm [unfold]"]
    for run in RUNS:  # every per-layer tag on exactly one chart of at most five layers
        tags = [t for t in http_json(server, "/data/plugin/scalars/tags")[run]
                if t.startswith("spectral/")]
        charts = [(re.compile(pattern), chart["title"]) for c in per_layer
                  for chart in c["chart"] for pattern in chart["multiline"]["tag"]]
        for tag in tags:
            assert len([t for regex, t in charts if regex.search(tag)]) == 1, tag
        for regex, title in charts:
            layers = {t.rsplit("/", 1)[1] for t in tags if regex.search(t)}
            assert len(layers) <= LAYERS_PER_CHART, title


def test_time_series_expands_the_alerts_and_the_aggregates(server):
    tags = http_json(server, "/data/plugin/scalars/tags")
    groups = sorted({t.split("/", 1)[0] for run in RUNS for t in tags[run]})
    assert groups[:2] == ["alerts", "all_layers"]  # TensorBoard expands the first two
    assert "alerts/rule/Planted" in tags["broken"]
    assert not [t for t in tags["healthy"] if t.startswith("alerts/rule/")]  # none fired
    for run in RUNS:
        assert not {"alerts/count", "alerts/raised", "alerts/healthy_step", "hp_metric"} & set(
            tags[run])
        assert not [t for t in tags[run] if t.startswith("spectral_summary/")]
        assert "all_layers/stable_rank_mean" in tags[run]


def _records(log_dir: str):
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulator = EventAccumulator(log_dir, size_guidance={"tensors": 0})
    accumulator.Reload()
    content = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert set(content) == {hparams_metadata.EXPERIMENT_TAG,
                            hparams_metadata.SESSION_START_INFO_TAG}  # one record, ours
    return plugin_data_pb2.HParamsPluginData.FromString(
        content[hparams_metadata.EXPERIMENT_TAG]).experiment


def test_hparams_lead_with_the_state_and_the_models_metrics(server, runs):
    _, dirs = runs
    experiment = http_json(server, "/data/plugin/hparams/experiment", {"experimentName": ""})
    metrics = [info["name"]["tag"] for info in experiment["metricInfos"]]
    assert metrics[:3] == ["alerts/active", "val_acc", "val_loss"]
    assert "alerts/total" in metrics and "hp_metric" not in metrics
    tags = http_json(server, "/data/plugin/scalars/tags")
    for run in RUNS:  # only metrics that exist
        assert set(metrics) <= set(tags[run]), set(metrics) - set(tags[run])
    broken, healthy = (_records(dirs[run]) for run in RUNS)
    differs = {run: {i.name for i in record.hparam_infos if i.differs}
               for run, record in (("broken", broken), ("healthy", healthy))}
    assert "lr" in differs["broken"] and "svd/history_file" in differs["broken"]
    assert "lr" not in differs["healthy"] and "width" in differs["healthy"]  # not the default
    assert not [n for n in differs["healthy"] if n.startswith("svd/analysis/")]
    groups = http_json(server, "/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                            "STATUS_RUNNING"],
        "colParams": [{"hparam": "lr"}, {"metric": {"group": "", "tag": "alerts/active"}}],
    })["sessionGroups"]
    active = {g["hparams"]["lr"]: [m["value"] for m in g["metricValues"]
                                   if m["name"]["tag"] == "alerts/active"] for g in groups}
    assert active == {0.05: [1.0], 0.003: [0.0]}


def test_compare_reads_the_new_runs_event_files(runs):
    """``svd-callback compare`` reads ``all_layers/`` runs as it read ``spectral_summary/`` ones
    (tests/test_compare_readable.py), the alerts from the rises of ``alerts/total``."""
    from svd_callback.runs import read_run

    _, dirs = runs
    for run in RUNS:  # the event files only: the fits wrote no history file
        read = read_run(dirs[run])
        assert read.source == "tensorboard"
        assert "stable_rank_mean" in read.summary_metrics()
        assert len(read.series("stable_rank_mean")) == 4  # epochs 0 to 3
    assert read_run(dirs["broken"]).alert_epochs() == [1]
    assert read_run(dirs["healthy"]).alert_epochs() == []
