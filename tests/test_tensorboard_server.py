"""A real TensorBoard server on 127.0.0.1 over a tiny monitored run: its HTTP API shows the
alert series, the custom-scalar layout in its fixed order and the alerts text. The server has a
startup timeout and is always stopped."""

from __future__ import annotations

import urllib.parse

import lightning.pytorch as pl
import pytest
from helpers import http_json, tensorboard_server
from lightning.pytorch.loggers import TensorBoardLogger

from svd_callback import SpectralMonitor
from svd_callback.examples import DigitsDataModule, SmallCNN

START_TIMEOUT_S = 90


def _get(port: int, path: str):
    return http_json(port, path)


@pytest.fixture
def monitored_run(tmp_path):
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                         logger=TensorBoardLogger(str(tmp_path), name="run", version=0),
                         callbacks=[SpectralMonitor(figures_every_n=0)],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(SmallCNN(), datamodule=DigitsDataModule())
    return tmp_path


@pytest.fixture
def server(monitored_run):
    def ready(port: int) -> bool:
        loaded = _get(port, "/data/plugin/scalars/tags")
        return any("alerts/total" in run for run in loaded.values())

    with tensorboard_server(monitored_run, ready, "the run", START_TIMEOUT_S) as port:
        yield port


def test_tensorboard_serves_alert_series_layout_and_alerts_text(server):
    tags = _get(server, "/data/plugin/scalars/tags")
    (run,) = tags
    scalars = tags[run]
    assert {"alerts/active", "alerts/total", "all_layers/alpha_mean",
            "spectral/alpha/hidden"} <= set(scalars)
    assert not [t for t in scalars if t.startswith("alerts/rule/")]  # no rule fired
    assert "cumulative" in scalars["alerts/total"]["description"]
    assert not any(t.endswith("_median") or "rank_loss" in t for t in scalars)

    layout = _get(server, "/data/plugin/custom_scalars/layout")
    titles = [category["title"] for category in layout["category"]]
    assert titles[:3] == ["alerts", "all layers [unfold]", "alpha [unfold]"]

    query = urllib.parse.urlencode({"run": run, "tag": "alerts"})
    texts = _get(server, f"/data/plugin/text/text?{query}")
    assert [entry["step"] for entry in texts][0] == 0  # present from the first analysis
    first = texts[0]["text"]
    assert "<strong>Healthy</strong>" in first and "AlphaBelow" in first and "<table>" in first
