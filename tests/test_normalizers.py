"""Layers whose output feeds BatchNorm: detected from the structure, checked against the
function (scaling the weight leaves the output unchanged), and judged scale-free by the norm
growth rules."""

from __future__ import annotations

import torch
from torch import nn

from svd_callback import analyze
from svd_callback.alerts import AlertEngine, MetricHistory, default_rules
from svd_callback.normalizers import output_normalizers
from svd_callback.report import LayerReport, Report


def conv_net(bn: bool, out: int = 64) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(8, out, 3, padding=1, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(out))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(out * 16, 10)]
    return nn.Sequential(*layers)


def scale_invariant(model: nn.Module, layer: str, c: float = 50.0) -> bool:
    """The functional definition: in training mode, the model's output does not change when
    ``layer``'s weight is multiplied by ``c``."""
    x = torch.randn(16, *example_shape(model), generator=torch.Generator().manual_seed(1))
    model.train()
    with torch.no_grad():
        before = model(x)
        weight = dict(model.named_modules())[layer].weight
        weight.mul_(c)
        after = model(x)
        weight.div_(c)
    return torch.allclose(before, after, rtol=1e-3, atol=1e-4)


def example_shape(model: nn.Module) -> tuple[int, ...]:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return (first.in_channels, 32, 32) if first.in_channels == 3 else (first.in_channels, 4, 4)


def test_sequential_detection_agrees_with_the_function():
    net = conv_net(bn=True)
    assert output_normalizers(net) == {"0": "1"}
    assert scale_invariant(net, "0")
    plain = conv_net(bn=False)
    assert output_normalizers(plain) == {}
    assert not scale_invariant(plain, "0")


def test_what_is_not_detected():
    after_relu = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8))
    wrong_width = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(4))
    assert output_normalizers(after_relu) == {}
    assert output_normalizers(wrong_width) == {}


def test_torchvision_resnet_naming_and_downsample():
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    found = output_normalizers(model)
    # independent oracle: torchvision's documented structure, conv<k> -> bn<k> in every
    # BasicBlock, downsample = Sequential(conv, bn), the stem conv1 -> bn1; fc unnormalised
    expected = {"conv1": "bn1"}
    for stage in range(1, 5):
        for block in range(2):
            for k in (1, 2):
                expected[f"layer{stage}.{block}.conv{k}"] = f"layer{stage}.{block}.bn{k}"
        if stage > 1:
            expected[f"layer{stage}.0.downsample.0"] = f"layer{stage}.0.downsample.1"
    assert found == expected
    assert scale_invariant(model, "layer2.0.conv1")


def test_analyze_records_the_normalizer():
    report = analyze(conv_net(bn=True), ["unfold", "operator"], input_size=4)
    assert {(r.name, r.mode): r.normalized_by for r in report} == {
        ("0", "unfold"): "1", ("0", "operator"): "1",
        ("4", "unfold"): None, ("4", "operator"): None,
    }


def norm_alerts(model: nn.Module, change) -> list[tuple[str, str, int]]:
    """Analyses at epochs 0, 1 (weight scaled / changed by ``change``) and 2 (unchanged),
    replayed through the default rules; the norm growth alerts raised."""
    engine = AlertEngine(default_rules(traps=False))
    alerts = []
    for epoch in range(3):
        if epoch == 1:
            with torch.no_grad():
                change(model[0].weight)
        alerts += engine.update(epoch, epoch, analyze(model, "unfold"))
    return [(a.rule, a.layer, a.epoch) for a in alerts if "SpectralNorm" in a.rule]


def test_scaling_a_batchnormed_conv_raises_no_norm_growth_alert():
    bn_net = conv_net(bn=True)
    assert norm_alerts(bn_net, lambda w: w.mul_(50.0)) == []
    plain = conv_net(bn=False)
    assert norm_alerts(plain, lambda w: w.mul_(50.0)) == [("SpectralNormBlowUp", "0", 1)]


def test_a_batchnormed_conv_concentrating_into_one_direction_is_still_flagged():
    """Scale-free judgement: spectral / Frobenius = 1 / sqrt(stable rank) rises from ~0.25
    (64 x 72 random) to 1 (rank one): 4x > 3x."""

    def rank_one(w: torch.Tensor) -> None:
        u = torch.randn(w.shape[0], 1, generator=torch.Generator().manual_seed(2))
        v = torch.randn(1, w[0].numel(), generator=torch.Generator().manual_seed(3))
        w.copy_((u @ v).reshape(w.shape))

    engine = AlertEngine(default_rules(traps=False))
    model = conv_net(bn=True)
    alerts = []
    for epoch in range(4):
        if epoch == 2:
            with torch.no_grad():
                rank_one(model[0].weight)
        alerts += engine.update(epoch, epoch, analyze(model, "unfold"))
    growth = [a for a in alerts if a.rule == "SpectralNormGrowth"]
    assert [(a.layer, a.epoch, a.metric) for a in growth] == [
        ("0", 2, "spectral_norm/frobenius_norm")]
    assert "normalised by '1'" in growth[0].message and growth[0].value > 0.99


def test_history_keeps_the_normalizer_through_a_checkpoint():
    history = MetricHistory()
    history.append(0, 0, Report([LayerReport("c", "conv2d", "unfold", metrics={"x": 1.0},
                                             normalized_by="bn")]))
    restored = MetricHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.latest.layers[("c", "unfold")].normalized_by == "bn"
    old = history.state_dict()
    for entry in old["entries"]:  # a state written before the field existed
        entry["layers"] = [row[:5] for row in entry["layers"]]
    restored.load_state_dict(old)
    assert restored.latest.layers[("c", "unfold")].normalized_by is None
