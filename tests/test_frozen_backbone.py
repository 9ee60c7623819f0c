"""Fine-tuning with a frozen backbone (``requires_grad=False``, as in torchvision's
feature-extraction recipe): ``LayerFrozen`` names the frozen layers (it cannot tell a deliberate
freeze from an accidental one), and excluding the backbone from the analysis, as the guide
says, leaves the run without a warning while the trained head is still judged."""

from __future__ import annotations

from helpers import digits_fit

from svd_callback.callback import SpectralMonitor
from svd_callback.examples import SmallCNN
from svd_callback.sinks.history import read_history
from svd_callback.sinks.history_rows import read_analyses


def _frozen_backbone() -> SmallCNN:
    model = SmallCNN()
    for parameter in model.features.parameters():
        parameter.requires_grad_(False)
    return model


def _warnings(monitor: SpectralMonitor) -> dict[str, set[str]]:
    fired: dict[str, set[str]] = {}
    for alert in monitor.alert_engine.alerts_so_far:
        if alert.severity != "info":
            fired.setdefault(alert.rule, set()).update(alert.layers or (alert.layer,))
    return fired


def test_layer_frozen_names_a_frozen_backbone(tmp_path):
    monitor = SpectralMonitor(figures_every_n=0)
    digits_fit(tmp_path, [monitor], _frozen_backbone, max_epochs=4, quiet=True)
    assert _warnings(monitor).get("LayerFrozen") == {"features.0", "features.2", "features.5"}


def test_excluding_a_frozen_backbone_leaves_the_head_judged_and_no_warning(tmp_path):
    monitor = SpectralMonitor(figures_every_n=0, exclude="features.*")
    digits_fit(tmp_path, [monitor], _frozen_backbone, max_epochs=4, quiet=True)
    assert _warnings(monitor) == {}
    last = read_analyses(read_history(tmp_path / "spectral_history.jsonl"))[-1]
    assert {record.name for record in last.report} == {"hidden", "classifier"}
