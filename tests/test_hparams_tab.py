"""TensorBoard's HPARAMS tab over two tiny monitored runs that differ in ``conv_mode``, read
through a real TensorBoard server's hparams HTTP API (POST JSON, as its frontend does): two
sessions with the monitor's settings merged with the model's ``save_hyperparameters()`` and the
final ``all_layers/alpha_mean`` as the last point of that scalar series (read
independently with TensorBoard's ``EventAccumulator``); the records add no scalar point."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from helpers import http_json, tensorboard_server
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from svd_callback import SpectralMonitor
from svd_callback.examples import DigitsDataModule, SmallCNN

START_TIMEOUT_S = 90
ALPHA = "all_layers/alpha_mean"
CONV_MODE = "svd/analysis/conv_mode"


def _post(port: int, path: str, body: dict):
    return http_json(port, path, body)


def _fit(root, name: str, conv_mode: str) -> str:
    pl.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(str(root), name=name, version=0)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                         logger=logger,
                         callbacks=[SpectralMonitor(conv_mode=conv_mode, log_init=False,
                                                    figures_every_n=0, histograms=False)],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(SmallCNN(width=8), datamodule=DigitsDataModule())
    return logger.log_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hparams")
    dirs = {mode: _fit(root, f"run_{mode}", mode) for mode in ("unfold", "operator")}
    return root, dirs


@pytest.fixture(scope="module")
def server(runs):
    root, _ = runs

    def ready(port: int) -> bool:
        groups = _session_groups(port)
        return len(groups) == 2 and all(_metric(g, ALPHA) is not None for g in groups)

    with tensorboard_server(root, ready, "both sessions", START_TIMEOUT_S) as port:
        yield port


def _session_groups(port: int) -> list[dict]:
    body = {"experimentName": "", "startIndex": 0, "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"],
            "colParams": [{"hparam": CONV_MODE}, {"hparam": "width"},
                          {"metric": {"group": "", "tag": ALPHA}}]}
    return _post(port, "/data/plugin/hparams/session_groups", body).get("sessionGroups", [])


def _metric(group: dict, tag: str) -> float | None:
    for value in group.get("metricValues", []):
        if value["name"]["tag"] == tag:
            return value["value"]
    return None


def _scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_experiment_lists_monitor_and_model_hparams_and_summary_metrics(server):
    experiment = _post(server, "/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {CONV_MODE, "svd/analysis/fit", "svd/analysis/normalization",
            "svd/analysis/ww_compat", "svd/every_n_epochs", "width", "lr"} <= names
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {ALPHA, "alerts/total"} <= metrics
    assert "hp_metric" not in metrics


def test_two_sessions_with_their_conv_mode_and_final_alpha(server, runs):
    _, dirs = runs
    groups = _session_groups(server)
    assert len(groups) == 2
    by_mode = {g["hparams"][CONV_MODE]: g for g in groups}
    assert set(by_mode) == {"unfold", "operator"}
    for mode, log_dir in dirs.items():
        group = by_mode[mode]
        assert group["hparams"]["width"] == 8
        series = _scalars(log_dir)[ALPHA]
        assert _metric(group, ALPHA) == pytest.approx(series[-1][1], rel=1e-6)
    # the conv mode changes the conv layers' spectra, hence the mean alpha
    assert _metric(by_mode["unfold"], ALPHA) != _metric(by_mode["operator"], ALPHA)


def test_hparams_records_add_no_scalar_point(runs):
    _, dirs = runs
    for log_dir in dirs.values():
        series = _scalars(log_dir)
        for tag in (ALPHA, "alerts/total"):
            steps = [step for step, _ in series[tag]]
            assert len(steps) == 2  # one point per analysis (two epochs, no initial one)
            assert 0 not in steps and steps == sorted(set(steps))
