"""The alert probe's architectures: each builds for one-channel 28 x 28 images and gives 10
logits, with layers the monitor analyses (convs, linears, recurrent gates, attention)."""

from __future__ import annotations

import pytest
import torch

from experiments.alert_probe.models import ARCHITECTURES
from svd_callback import analyze


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_probe_architecture_classifies_fashion_images_and_is_analysed(name):
    build, recipe = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert recipe["optimizer"] in ("sgd", "adamw")
    report = analyze(model, metrics=("norms",), example_input=torch.randn(1, 1, 28, 28))
    analysed = [r for r in report if not r.skipped]
    assert len(analysed) >= 3 and any(r.name.endswith(("head", "fc", "classifier.3"))
                                      for r in analysed)
