"""What the default rule set judges: weight-matrix modes and layers of >= 100 eigenvalues for
the alpha rules, a scale-free generalisation gap (experiments/alert_zoo)."""

from __future__ import annotations

from svd_callback.alerts import AlertEngine, MeanAlphaTrend, default_rules
from svd_callback.alerts.engine import ALPHA_MIN_EIGS
from svd_callback.report import LayerReport, Report


def layer(name: str, mode: str, alpha: float, eigs: int, sigma: float = 0.01) -> LayerReport:
    return LayerReport(name, "conv2d", mode, metrics={
        "alpha": alpha, "alpha_sigma": sigma, "matrix_rank": float(eigs), "rank_loss": 0.0})


def rules_fired(records: list[LayerReport], summary=None, epochs: int = 4) -> set[str]:
    engine = AlertEngine(default_rules(traps=False))
    fired = set()
    for epoch in range(epochs):
        fired |= {a.rule for a in engine.update(epoch, epoch, Report(records), summary)}
    return fired


def test_alpha_rules_skip_the_operator_mode_and_small_layers():
    assert ALPHA_MIN_EIGS == 100
    assert rules_fired([layer("c", "operator", 1.5, 1024)]) == set()
    assert rules_fired([layer("c", "operator", 20.0, 1024)]) == set()
    assert rules_fired([layer("c", "unfold", 1.5, 64)]) == set()
    assert rules_fired([layer("c", "unfold", 1.5, 100)]) == {"AlphaBelow"}
    logged = {"unfold": {"alpha_mean": 1.5}}  # the model-level rule follows the logged modes
    assert rules_fired([layer("c", "unfold", 1.5, 100)], logged) == {"AlphaBelow",
                                                                      "MeanAlphaTrend"}
    assert rules_fired([layer("c", "unfold", 1.5, 64)], logged) == set()
    assert rules_fired([layer("c", "slices", 9.0, 100)]) == {"AlphaAbove"}


def test_mean_alpha_over_large_layers_names_its_selection():
    records = [layer("small", "unfold", 1.2, 64), layer("large", "unfold", 1.5, 300)]
    engine = AlertEngine([MeanAlphaTrend(min_eigs=100)])
    alerts = [a for e in range(3) for a in engine.update(e, e, Report(records),
                                                         {"unfold": {"alpha_mean": 1.35}})]
    assert [(a.metric, a.value) for a in alerts] == [("alpha_mean[>=100 eigs]", 1.5)]
    big_only = [layer("small", "unfold", 1.2, 64), layer("large", "unfold", 3.0, 300)]
    engine = AlertEngine([MeanAlphaTrend(min_eigs=100)])
    assert not [a for e in range(3) for a in engine.update(e, e, Report(big_only),
                                                           {"unfold": {"alpha_mean": 2.1}})]
    plain = AlertEngine([MeanAlphaTrend()])  # the logged aggregate, as before
    assert [a.value for e in range(3) for a in plain.update(
        e, e, Report(big_only), {"unfold": {"alpha_mean": 1.35}})] == [1.35]


def test_generalization_gap_needs_a_doubled_validation_loss_after_two_analyses_by_default():
    """Losses only: a one-epoch bump and a rise of 70% (healthy SGD runs of the digits CNN
    over-fit their loss that far at val accuracy 0.96-0.98, experiments/alert_zoo) are silent;
    a validation loss that has not improved for two analyses and is now more than twice its
    best while the training loss falls fires."""
    def fired(val, train):
        engine = AlertEngine(default_rules(traps=False))
        return [a.epoch for e, (v, t) in enumerate(zip(val, train, strict=True))
                for a in engine.update(e, e, Report(), training={"val_loss": v,
                                                                 "train_loss": t})]
    falling = [1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1]
    assert fired([1.0, 0.5, 1.1, 0.5, 0.5, 0.5, 0.5], falling) == []
    assert fired([1.0, 0.5, 0.6, 0.85, 0.8, 0.7, 0.85], falling) == []
    assert fired([1.0, 0.5, 0.6, 0.9, 1.1, 1.2, 1.3], falling) == [4]
