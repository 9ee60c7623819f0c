"""Model-level parity with WeightWatcher 0.7.7: analyze(model, "slices", ww_compat=True)."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

ww = pytest.importorskip("weightwatcher")

METRICS = ["alpha", "D", "xmin", "log_norm", "log_spectral_norm", "alpha_weighted",
           "stable_rank", "entropy", "log_alpha_norm"]


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def briefly_trained() -> nn.Module:
    from sklearn.datasets import load_digits

    torch.manual_seed(1)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    return model


def ww_frame(model: nn.Module):
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ww.WeightWatcher(model=model).analyze()


@pytest.mark.parametrize("make", [lambda: (torch.manual_seed(0), cnn())[1], briefly_trained],
                         ids=["random-init", "trained"])
def test_layer_by_layer_parity(make):
    from svd_callback import analyze

    model = make()
    theirs = ww_frame(model)
    ours = analyze(model, "slices", ww_compat=True)
    analysed = ours.analysed()
    assert [r.name for r in analysed] == list(theirs["name"].astype(str))
    for record, (_, row) in zip(analysed, theirs.iterrows(), strict=True):
        assert record.normalization == "ww" and record.mode == "slices"
        for metric in METRICS:
            a, b = record.metrics[metric], float(row[metric])
            assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (record.name, metric, a, b)
        assert record.metrics["n_tail"] == row["num_pl_spikes"]
