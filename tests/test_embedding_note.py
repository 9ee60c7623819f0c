"""Embedding tables left out by the default ``embeddings=False`` are noted once per fit, at info
level, naming every table: a choice the user made, not a problem to warn about per table."""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl
import torch
from helpers import digits_fit
from torch import nn
from torch.nn import functional as F

from svd_callback.callback import SpectralMonitor


class PixelTokens(pl.LightningModule):
    """Each pixel's grey level (0..16) a token with a learned position: two embedding tables."""

    def __init__(self) -> None:
        super().__init__()
        self.level = nn.Embedding(17, 4)
        self.position = nn.Embedding(64, 4)
        self.head = nn.Linear(64 * 4, 10)

    def forward(self, x):
        tokens = (x.flatten(1) * 16).round().long().clamp(0, 16)
        return self.head((self.level(tokens) + self.position.weight).flatten(1))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def fit_and_capture(tmp_path, caplog, monitor):
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        digits_fit(tmp_path, [monitor], PixelTokens, max_epochs=2, limit_train_batches=2,
                   limit_val_batches=0)
    notes = [r for r in caplog.records if "embedding table" in r.getMessage()]
    warned = [w for w in caught if "embedding" in str(w.message).lower()]
    return notes, warned


def test_left_out_embeddings_are_one_info_line_per_fit(tmp_path, caplog):
    monitor = SpectralMonitor(conv_mode=("unfold", "slices"), every_n_steps=1,
                              figures_every_n=0, histograms=False, metrics=("norms",))
    notes, warned = fit_and_capture(tmp_path / "a", caplog, monitor)
    assert monitor.schedule.analyses >= 4
    assert not warned  # no UserWarning, neither per table nor per mode
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "2 embedding table(s) not analysed, embeddings are off (level, position)" in (
        notes[0].getMessage())
    caplog.clear()
    notes, warned = fit_and_capture(tmp_path / "b", caplog, monitor)  # a second fit: again once
    assert len(notes) == 1 and not warned


def test_with_embeddings_on_nothing_is_noted(tmp_path, caplog):
    monitor = SpectralMonitor(embeddings=True, figures_every_n=0, histograms=False,
                              metrics=("norms",))
    notes, warned = fit_and_capture(tmp_path, caplog, monitor)
    assert not notes and not warned
    assert {r.name for r in monitor.last_result.report.analysed()} == {"level", "position",
                                                                       "head"}
