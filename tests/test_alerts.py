"""Alert rules, hysteresis, history and engine on synthetic report sequences."""

from __future__ import annotations

import json
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svd_callback.alerts import (
    Alert,
    AlertEngine,
    AlphaAbove,
    AlphaBelow,
    CallableRule,
    GeneralizationGap,
    Hysteresis,
    MeanAlphaTrend,
    MetricHistory,
    NonFiniteWeights,
    RankCollapse,
    Rule,
    SpectralNormGrowth,
    TrapsAppeared,
    default_rules,
)
from svd_callback.report import LayerReport, Report

NAN, INF = math.nan, math.inf
NONFINITE = "weight has non-finite entries (3 NaN, 0 Inf)"


def record(name: str, mode: str = "unfold", reason: str | None = None, **metrics) -> LayerReport:
    return LayerReport(name, "conv2d", mode, metrics=metrics, reason=reason)


def run(engine: AlertEngine, reports, summaries=None) -> list[list[Alert]]:
    """Feed analyses at epochs 0, 1, ... (step = 100 * epoch); alerts per analysis."""
    summaries = summaries or [None] * len(reports)
    return [
        engine.update(epoch, 100 * epoch, Report(rep), summary)
        for epoch, (rep, summary) in enumerate(zip(reports, summaries, strict=True))
    ]


def fired_at(per_analysis: list[list[Alert]], rule: str | None = None) -> list[int]:
    return [i for i, alerts in enumerate(per_analysis) for a in alerts if rule in (None, a.rule)]


def as_json(alerts: list[Alert]) -> str:
    """Comparable form (NaN values compare equal as text)."""
    return json.dumps([a.to_dict() for a in alerts])


def one_metric(metric: str, values, layer: str = "conv1", mode: str = "unfold"):
    return [[record(layer, mode, **{metric: v})] for v in values]


# --------------------------------------------------------------------------- hysteresis
def reference_fires(holds: list[bool | None], patience: int, start_armed: bool = True) -> list[int]:
    """Independent definition: fire at i iff the condition holds at i and exactly ``patience``
    holding observations (ignoring None) follow the last clearing observation (or the start,
    when armed from the start)."""
    out = []
    for i, h in enumerate(holds):
        if h is not True:
            continue
        seen = [x for x in holds[: i + 1] if x is not None]
        cleared = False in seen
        if not cleared and not start_armed:
            continue
        run_len = seen[::-1].index(False) if cleared else len(seen)
        if run_len == patience:
            out.append(i)
    return out


@settings(max_examples=150, deadline=None)
@given(
    holds=st.lists(st.sampled_from([True, False, None]), max_size=40),
    patience=st.integers(1, 4),
    start_armed=st.booleans(),
)
def test_hysteresis_matches_streak_definition(holds, patience, start_armed):
    h = Hysteresis(patience, start_armed)
    fires = [i for i, x in enumerate(holds) if h.update("k", x)]
    assert fires == reference_fires(holds, patience, start_armed)


def test_alpha_below_fires_once_after_patience_and_rearms():
    alphas = [3.0, 1.9, 1.8, 1.7, 1.6, 2.5, 1.9, 1.8, 1.7]
    per = run(AlertEngine([AlphaBelow(threshold=2.0, patience=2)]), one_metric("alpha", alphas))
    assert fired_at(per) == [2, 7]
    first = per[2][0]
    assert (first.rule, first.layer, first.mode, first.metric) == (
        "AlphaBelow",
        "conv1",
        "unfold",
        "alpha",
    )
    assert first.values == (1.9, 1.8) and first.value == 1.8 and first.threshold == 2.0
    assert (first.epoch, first.step, first.severity) == (2, 200, "warning")
    assert "\n" not in first.message
    for text in ("AlphaBelow", "'conv1'", "1.9", "1.8", "epoch 2"):
        assert text in first.message


def test_alpha_below_needs_alpha_clear_of_the_limit_by_its_standard_error():
    def seq(alpha, sigma, eigs=64):
        return [[record("conv1", alpha=alpha, alpha_sigma=sigma, matrix_rank=eigs - 2.0,
                        rank_loss=2.0)]] * 2

    # 1.9 +- 0.1: within two standard errors of 2, no evidence of over-training
    assert fired_at(run(AlertEngine([AlphaBelow()]), seq(1.9, 0.1))) == []
    # 1.75 +- 0.1: 2.5 standard errors below 2
    per = run(AlertEngine([AlphaBelow()]), seq(1.75, 0.1))
    assert fired_at(per) == [1]
    assert "by more than 2 x its standard error 0.1" in per[1][0].message
    # the plain published rule
    assert fired_at(run(AlertEngine([AlphaBelow(confidence=0)]), seq(1.9, 0.1))) == [1]
    # a missing or NaN sigma counts as 0
    assert fired_at(run(AlertEngine([AlphaBelow()]), seq(1.9, NAN))) == [1]


def test_alpha_below_skips_small_spectra():
    def seq(eigs):
        return [[record("conv1", alpha=1.5, alpha_sigma=0.05, matrix_rank=float(eigs),
                        rank_loss=0.0)]] * 3

    assert fired_at(run(AlertEngine([AlphaBelow()]), seq(32))) == []  # TempBalance: < 50
    assert fired_at(run(AlertEngine([AlphaBelow()]), seq(50))) == [1]
    assert fired_at(run(AlertEngine([AlphaBelow(min_eigs=0)]), seq(32))) == [1]
    # rank loss counts: 40 of rank plus 20 zero eigenvalues is a 60-eigenvalue spectrum
    seq60 = [[record("conv1", alpha=1.5, alpha_sigma=0.05, matrix_rank=40.0,
                     rank_loss=20.0)]] * 2
    assert fired_at(run(AlertEngine([AlphaBelow()]), seq60)) == [1]


def test_mean_alpha_level_uses_the_standard_error_of_the_mean():
    def analyses(sigma):
        layers = [record(name, alpha=1.9, alpha_sigma=sigma) for name in ("a", "b")]
        layers.append(record("tiny", alpha=NAN, alpha_sigma=NAN))  # no fit: not counted
        return [layers] * 3, [{"unfold": {"alpha_mean": 1.9}}] * 3

    # se = sqrt(2 * 0.2^2) / 2 = 0.141: 1.9 + 2 se = 2.18, not below 2
    reports, summaries = analyses(0.2)
    assert fired_at(run(AlertEngine([MeanAlphaTrend(patience=1)]), reports, summaries)) == []
    # se = 0.014: 1.9 + 2 se = 1.93 < 2
    reports, summaries = analyses(0.02)
    per = run(AlertEngine([MeanAlphaTrend(patience=1)]), reports, summaries)
    assert fired_at(per) == [1]
    assert "standard error 0.0141" in per[1][0].message
    reports, summaries = analyses(0.2)
    per = run(AlertEngine([MeanAlphaTrend(patience=1, confidence=0)]), reports, summaries)
    assert fired_at(per) == [1]


# --------------------------------------------------------------------------- healthy runs
def healthy_sequence(n_epochs: int = 12):
    """Three layers in two modes: a random-init-like baseline at epoch 0 (large alpha, small
    spectral norm), then alpha within [2.3, 5.7], norms and ranks steady, no traps."""
    reports, summaries = [], []
    for epoch in range(n_epochs):
        rep = []
        for i, layer in enumerate(("conv1", "conv2", "fc")):
            for mode in ("unfold", "operator"):
                wiggle = ((epoch * 7 + i * 3) % 5) / 5  # deterministic, in [0, 0.8]
                alpha = 15.0 + i if epoch == 0 else 2.3 + 0.8 * i + 1.5 * wiggle
                rep.append(
                    record(
                        layer,
                        mode,
                        alpha=alpha,
                        spectral_norm=(0.5 if epoch == 0 else 3.5) * (1 + 0.1 * wiggle),
                        stable_rank=20.0 - 2 * wiggle,
                        matrix_rank=64.0 - (epoch % 2),
                        num_traps=0.0,
                    )
                )
        summaries.append({"alpha_mean": sum(r.metrics["alpha"] for r in rep) / len(rep)})
        reports.append(rep)
    return reports, summaries


def all_builtin_rules() -> list[Rule]:
    return [
        *default_rules(),
        RankCollapse(name="StableRankCollapse"),
        MeanAlphaTrend(name="MeanAlphaSlope", slope_below=-0.5, slope_window=4),
        MeanAlphaTrend(name="MeanAlphaAggregate"),  # the logged aggregate, not the layers'
    ]


def test_healthy_sequence_is_silent():
    reports, summaries = healthy_sequence()
    per = run(AlertEngine(all_builtin_rules()), reports, summaries)
    assert fired_at(per) == []


# --------------------------------------------------------------------------- planted conditions
def test_alpha_above_ignores_the_random_init_epoch():
    per = run(AlertEngine([AlphaAbove()]), one_metric("alpha", [20.0, 7.0, 7.0, 7.0, 7.0, 4.0]))
    assert fired_at(per) == [3]  # epochs 1, 2, 3 (epoch 0 not counted)
    per = run(AlertEngine([AlphaAbove(min_epoch=0)]), one_metric("alpha", [20.0, 7.0, 7.0]))
    assert fired_at(per) == [2]


def test_alpha_above_must_clear_the_limit_by_two_standard_errors_on_large_layers():
    def seq(alpha, sigma, eigs):
        return [[record("c", "unfold", alpha=alpha, alpha_sigma=sigma, matrix_rank=eigs,
                        rank_loss=0.0)] for _ in range(4)]
    # the healthy ResNet's 32-eigenvalue conv: alpha 6.5 +- 1.74 (too small, too uncertain)
    assert fired_at(run(AlertEngine([AlphaAbove(min_eigs=100)]), seq(6.5, 1.74, 32))) == []
    assert fired_at(run(AlertEngine([AlphaAbove()]), seq(6.5, 1.74, 128))) == []
    assert fired_at(run(AlertEngine([AlphaAbove()]), seq(9.0, 1.0, 128))) == [3]  # 9 - 2 > 6
    assert fired_at(run(AlertEngine([AlphaAbove(min_eigs=100)]), seq(9.0, 1.0, 64))) == []
    plain = AlphaAbove(confidence=0.0, min_eigs=0)
    assert fired_at(run(AlertEngine([plain]), seq(6.5, 1.74, 32))) == [3]


def test_alpha_rules_count_the_eigenvalues_of_one_analysed_matrix():
    # slices mode pools kh * kw matrices: 9 slices of 32 x 32 give 288 eigenvalues, but each
    # fit is as size-biased as one 32 x 32 matrix (a healthy CNN fitted 1.68 +- 0.06)
    def seq(shape):
        return [[LayerReport("c", "conv2d", "slices", matrix_shape=shape, metrics={
            "alpha": 1.68, "alpha_sigma": 0.06, "matrix_rank": 288.0, "rank_loss": 0.0})]
            for _ in range(3)]
    assert fired_at(run(AlertEngine([AlphaBelow(min_eigs=100)]), seq((32, 32)))) == []
    assert fired_at(run(AlertEngine([AlphaBelow(min_eigs=100)]), seq((256, 128)))) == [1]
    assert fired_at(run(AlertEngine([AlphaBelow(min_eigs=100)]), seq(None))) == [1]  # 288


def test_alpha_sentinel_of_failed_fit_is_ignored():
    per = run(AlertEngine([AlphaBelow(patience=1)]), one_metric("alpha", [3.0, -1.0, 1.0, 3.0]))
    assert fired_at(per) == []


def test_spectral_norm_growth():
    norms = [0.5, 1.0, 1.1, 4.0, 4.2, 4.1, 13.0]
    per = run(AlertEngine([SpectralNormGrowth(factor=3.0)]), one_metric("spectral_norm", norms))
    assert fired_at(per) == [3, 6]
    assert per[3][0].threshold == 3.0 and "grew 3.636x" in per[3][0].message
    per = run(
        AlertEngine([SpectralNormGrowth(factor=3.0, window=2)]),
        one_metric("spectral_norm", [9.0, 1.0, 2.0, 2.5, 4.0, 8.0]),
    )
    # ratios vs 2 analyses back from epoch 1 on: 2.5/1, 4/2, 8/2.5
    assert fired_at(per) == [5]



def test_spectral_norm_growth_below_the_floor_is_ignored():
    """A zero-initialised layer: 6.6e-8 -> 2.1e-7 is 3.2x but negligible; measured from 1e-3 on."""
    norms = [0.0, 6.6e-8, 2.1e-7, 5e-4, 2e-3, 7e-3]
    per = run(AlertEngine([SpectralNormGrowth(factor=3.0)]), one_metric("spectral_norm", norms))
    assert fired_at(per) == [5]  # 5e-4 -> 2e-3 (4x) is from below the floor; 2e-3 -> 7e-3 is not
    per = run(AlertEngine([SpectralNormGrowth(factor=3.0, floor=0.0)]),
              one_metric("spectral_norm", norms))
    assert fired_at(per) == [2]  # the old behaviour: fires on 6.6e-8 -> 2.1e-7, then stays high
    with pytest.raises(ValueError, match="floor.*-1"):
        SpectralNormGrowth(floor=-1)


@pytest.mark.parametrize(
    ("reference", "values", "expected"),
    [
        ("max", [10.0, 12.0, 8.0, 6.1, 5.9, 5.0, 7.0, 5.5], [4, 7]),
        ("first", [10.0, 12.0, 8.0, 6.1, 5.9, 5.0, 4.9], [6]),
    ],
)
def test_rank_collapse(reference, values, expected):
    rule = RankCollapse("stable_rank", drop_fraction=0.5, reference=reference)
    per = run(AlertEngine([rule]), one_metric("stable_rank", values))
    assert fired_at(per) == expected
    alert = per[expected[0]][0]
    ref = 12.0 if reference == "max" else 10.0
    assert alert.threshold == pytest.approx(0.5 * ref)
    assert "rank collapse" in alert.message


def test_traps_appeared_only_where_there_were_none():
    per = run(AlertEngine([TrapsAppeared()]), one_metric("num_traps", [0, 0, 2, 3, 0, 1]))
    assert fired_at(per) == [2, 5]
    assert "(was 0)" in per[2][0].message
    per = run(AlertEngine([TrapsAppeared()]), one_metric("num_traps", [2, 2, 2, 0, 1]))
    assert fired_at(per) == [4]


def test_non_finite_weights_stops_once_per_layer():
    bad = [record("conv1", m, reason=NONFINITE) for m in ("unfold", "operator")]
    small = [record("fc", "unfold", reason="too few eigenvalues (4 < 8)")]
    good = [record("conv1", m, alpha=3.0) for m in ("unfold", "operator")]
    engine = AlertEngine([NonFiniteWeights()])
    per = run(engine, [good + small, bad + small, bad + small, good, bad])
    assert fired_at(per) == [1, 4]
    alert = per[1][0]
    assert (alert.layer, alert.mode, alert.severity) == ("conv1", "unfold,operator", "stop")
    assert NONFINITE in alert.message and engine.should_stop(per[1])
    assert not engine.should_stop(per[2])
    per = run(AlertEngine([NonFiniteWeights(action="log")]), [bad])
    assert per[0][0].severity == "warning"


def test_mean_alpha_level_and_trend_per_mode():
    def summary(unfold, operator):
        return {"unfold": {"alpha_mean": unfold}, "operator": {"alpha_mean": operator}}

    levels = [(5.0, 5.0), (4.0, 3.0), (3.0, 1.9), (2.6, 1.8), (2.5, 1.7), (2.5, 2.2)]
    rule = MeanAlphaTrend(threshold=2.0, patience=2, slope_below=-0.5, slope_window=3, min_epoch=0)
    per = run(AlertEngine([rule]), [[]] * len(levels), [summary(*lv) for lv in levels])
    got = [(i, a.mode, a.metric) for i, alerts in enumerate(per) for a in alerts]
    assert got == [
        # slope of 5, 4, 3 = -1 per epoch (unfold) and of 5, 3, 1.9 = -1.55 (operator): one
        # alert for the two conditions that started together
        (2, "unfold,operator", "alpha_mean_slope"),
        (3, "operator", "alpha_mean"),  # 1.9, 1.8: second analysis below 2
    ]
    assert per[2][0].values == pytest.approx((-1.0, -1.55))
    assert "2 conditions" in per[2][0].message
    assert per[3][0].values == (1.9, 1.8)
    # another mode's aggregate is ignored
    rule = MeanAlphaTrend(modes=["operator"])
    per = run(AlertEngine([rule]), [[]] * len(levels), [summary(*lv) for lv in levels])
    assert [(i, a.mode) for i, alerts in enumerate(per) for a in alerts] == [(3, "operator")]


def test_rules_only_watch_their_modes_and_layers():
    seq = [[record("conv1", "unfold", alpha=1.5), record("fc", "operator", alpha=1.5)]] * 3
    per = run(AlertEngine([AlphaBelow(modes=["operator"])]), seq)
    assert [(a.layer, a.mode) for alerts in per for a in alerts] == [("fc", "operator")]
    per = run(AlertEngine([AlphaBelow(layers=r"^conv")]), seq)
    assert [(a.layer, a.mode) for alerts in per for a in alerts] == [("conv1", "unfold")]


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_values_are_no_evidence(bad):
    engine = AlertEngine([AlphaBelow(patience=2)])
    assert fired_at(run(engine, one_metric("alpha", [1.5, bad, 1.5]))) == [2]
    engine = AlertEngine([AlphaBelow(patience=2)])
    assert fired_at(run(engine, one_metric("alpha", [1.5, bad, bad, 3.0, 1.5]))) == []
    # growth is measured against the last finite value
    norms = [1.0, bad, 4.0]
    assert fired_at(
        run(AlertEngine([SpectralNormGrowth(min_epoch=0)]), one_metric("spectral_norm", norms))
    ) == [2]
    per = run(
        AlertEngine([MeanAlphaTrend(patience=1)]),
        [[]] * 3,
        [{"alpha_mean": v} for v in (3.0, bad, 1.0)],
    )
    assert fired_at(per) == [2]


# --------------------------------------------------------------------------- history
def test_history_series_bounds_and_duplicates():
    h = MetricHistory(max_len=5)
    for epoch in range(20):
        rep = Report(
            [record("conv1", "unfold", alpha=float(epoch)), record("conv1", "operator", alpha=-1.0)]
        )
        assert h.append(epoch, 10 * epoch, rep, {"alpha_mean": epoch / 2})
    assert not h.append(19, 190, Report([record("conv1", alpha=99.0)]))  # same (epoch, step)
    assert not h.append(18, 180, Report())  # older than the newest kept analysis
    assert len(h) == 5
    assert h.series("conv1", "alpha", "unfold") == [(e, 10 * e, float(e)) for e in range(15, 20)]
    assert h.summary_series("alpha_mean") == [(e, 10 * e, e / 2) for e in range(15, 20)]
    assert h.series("conv1", "missing", "unfold") == []
    with pytest.raises(ValueError, match="several modes"):
        h.series("conv1", "alpha")
    assert h.modes() == ["unfold", "operator"] and h.layer_names() == ["conv1"]


def test_history_state_is_plain_and_round_trips():
    h = MetricHistory(max_len=4)
    for epoch in range(6):
        rep = [record("a", alpha=1.0 + epoch, stable_rank=NAN), record("b", reason=NONFINITE)]
        h.append(epoch, epoch, Report(rep), {"unfold": {"alpha_mean": float(epoch)}})
    state = json.loads(json.dumps(h.state_dict()))
    h2 = MetricHistory(max_len=4)
    h2.load_state_dict(state)
    assert h2.series("a", "alpha", "unfold") == h.series("a", "alpha", "unfold")
    assert h2.summary_series("alpha_mean", "unfold") == h.summary_series("alpha_mean")
    assert math.isnan(h2.latest.get("a", "stable_rank", "unfold"))
    assert h2.latest.layers[("b", "unfold")].reason == NONFINITE
    assert not h2.append(5, 5, Report())
    with pytest.raises(ValueError, match="version"):
        h2.load_state_dict({"version": 99})


@pytest.mark.parametrize(
    ("summary", "key"),
    [
        ({"alpha_mean": 2.5}, ("alpha_mean", None)),
        ({"alpha_mean/unfold": 2.5}, ("alpha_mean/unfold", None)),  # taken as it is
        ({"unfold": {"alpha_mean": 2.5}}, ("alpha_mean", "unfold")),
    ],
)
def test_summary_keys_are_taken_as_given_never_parsed(summary, key):
    h = MetricHistory()
    h.append(0, 0, Report(), summary)
    assert list(h.latest.summary) == [key]
    assert h.summary_series(*key) == [(0, 0, 2.5)]


def test_duplicate_update_is_ignored_by_the_engine():
    engine = AlertEngine([AlphaBelow(patience=2)])
    rep = Report([record("conv1", alpha=1.5)])
    assert engine.update(3, 300, rep) == []
    assert engine.update(3, 300, rep) == []  # would reach patience if counted twice
    assert len(engine.history) == 1
    assert [a.epoch for a in engine.update(4, 400, rep)] == [4]


# --------------------------------------------------------------------------- resume
def planted_sequence(n: int = 16):
    """Every built-in rule fires at least once over these analyses."""
    reports, summaries = [], []
    for e in range(n):
        alpha = [15.0, 3.0, 1.9, 1.8, 1.7, 3.0, 7.0, 7.0, 7.0, 7.0, NAN, 1.5, 1.4, 3.0, 3.0, 3.0][
            e % 16
        ]
        reports.append(
            [
                record(
                    "conv1",
                    alpha=alpha,
                    spectral_norm=[1.0, 1.0, 1.1, 5.0, 5.0, 5.2][e % 6],
                    matrix_rank=[64.0, 64.0, 20.0, 64.0][e % 4],
                    num_traps=float(e % 5 == 3),
                ),
                record("conv2", reason=NONFINITE if e in (7, 8, 12) else None, alpha=4.0),
            ]
        )
        summaries.append({"alpha_mean": alpha / 2 + 0.5})
    return reports, summaries


def test_resume_from_state_gives_the_same_alerts():
    reports, summaries = planted_sequence()
    reference = AlertEngine(all_builtin_rules())
    run(reference, reports, summaries)
    expected = as_json(reference.alerts_so_far)
    assert {a.rule for a in reference.alerts_so_far} >= {
        "AlphaBelow",
        "AlphaAbove",
        "SpectralNormGrowth",
        "RankCollapse",
        "TrapsAppeared",
        "NonFiniteWeights",
        "MeanAlphaAggregate",
        "MeanAlphaSlope",
    }
    for cut in range(1, len(reports)):
        first = AlertEngine(all_builtin_rules())
        for e in range(cut):
            first.update(e, 100 * e, Report(reports[e]), summaries[e])
        state = pickle.loads(pickle.dumps(json.loads(json.dumps(first.state_dict()))))
        resumed = AlertEngine(all_builtin_rules())
        resumed.load_state_dict(state)
        # a resumed run re-analyses the last checkpointed epoch, then carries on
        for e in range(cut - 1, len(reports)):
            resumed.update(e, 100 * e, Report(reports[e]), summaries[e])
        assert as_json(resumed.alerts_so_far) == expected, cut


def test_engine_state_contains_plain_types_only():
    reports, summaries = planted_sequence(8)
    engine = AlertEngine(all_builtin_rules())
    run(engine, reports, summaries)

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (str, int, float, bool))

    assert plain(engine.state_dict())


# --------------------------------------------------------------------------- user rules
def test_raising_user_rule_becomes_a_warning_and_training_goes_on():
    calls = []

    def flaky(history, epoch, step):
        calls.append(epoch)
        if epoch in (0, 1, 3):
            raise ZeroDivisionError("division by zero")
        return []

    engine = AlertEngine([CallableRule(flaky), AlphaBelow(patience=1)])
    per = run(engine, one_metric("alpha", [1.5, 3.0, 3.0, 3.0]))
    errors = [(i, a) for i, alerts in enumerate(per) for a in alerts if a.rule == "flaky"]
    assert [i for i, _ in errors] == [0, 3]  # epoch 1 repeats the same error; epoch 2 succeeded
    assert errors[0][1].severity == "warning"
    assert "ZeroDivisionError" in errors[0][1].message and "'flaky'" in errors[0][1].message
    assert calls == [0, 1, 2, 3]
    assert fired_at(per, "AlphaBelow") == [0]  # the other rule still ran


def test_raising_action_and_bad_return_values_become_warnings():
    def action(alert):
        raise RuntimeError("sink down")

    engine = AlertEngine(
        [AlphaBelow(patience=1, action=action), CallableRule(lambda h, e, s: [42], name="bad")]
    )
    alerts = engine.update(0, 0, Report([record("conv1", alpha=1.5)]))
    by_rule = {(a.rule, "raised" in a.message) for a in alerts}
    assert by_rule == {("AlphaBelow", False), ("AlphaBelow", True), ("bad", True)}
    assert all(a.severity == "warning" for a in alerts)


def test_callable_rule_and_callable_action():
    def note(history, epoch, step):
        if epoch == 1:
            return f"{len(history)} analyses so far"
        return ["first", Alert(rule="note", layer="fc", message="custom")] if epoch == 2 else None

    engine = AlertEngine([note, AlphaBelow(patience=1, action=lambda a: a.value < 1.6)])
    per = run(
        engine,
        one_metric("alpha", [3.0, 1.7, 1.5])
        + [[record("conv1", alpha=3.0)], [record("conv1", alpha=1.55)]],
    )
    messages = [(i, a.rule, a.message, a.epoch, a.severity) for i, al in enumerate(per) for a in al]
    assert messages[0] == (1, "note", "2 analyses so far", 1, "warning")
    assert messages[1][:2] == (1, "AlphaBelow") and messages[1][4] == "warning"
    # the two alerts the rule returned at epoch 2 are one (one rule, one analysis)
    assert messages[2] == (2, "note", "note: 2 conditions: first; custom", 2, "warning")
    assert per[2][0].layers == ("fc",)
    assert [(i, sev) for i, r, _, _, sev in messages if r == "AlphaBelow"] == [
        (1, "warning"),
        (4, "stop"),
    ]
    assert engine.should_stop(per[4]) and not engine.should_stop(per[1])


def test_subclassed_rule_and_configuration_errors():
    class EveryTime(Rule):
        name = "every"
        action = "stop"

        def check(self, history, epoch, step):
            return [
                self.make_alert(
                    metric="n_layers", value=len(history.latest.layers), epoch=epoch, step=step
                )
            ]

    engine = AlertEngine([EveryTime()])
    (alert,) = engine.update(0, 0, Report([record("conv1")]))
    assert (alert.rule, alert.severity, alert.value) == ("every", "stop", 1.0)
    assert engine.should_stop()
    assert Alert.from_dict(alert.to_dict()) == alert
    with pytest.raises(ValueError, match="unique"):
        AlertEngine([AlphaBelow(), AlphaBelow()])
    with pytest.raises(ValueError, match="action"):
        AlphaBelow(action="explode")
    with pytest.raises(ValueError, match="severity"):
        Alert(rule="x", severity="fatal")
    with pytest.raises(ValueError, match="patience"):
        AlphaBelow(patience=0)
    with pytest.raises(ValueError, match="drop_fraction"):
        RankCollapse(drop_fraction=1.5)
    with pytest.raises(ValueError, match="max_len"):
        MetricHistory(max_len=0)


def test_only_non_finite_weights_stops_by_default():
    assert {r.name: r.action for r in default_rules()} == {
        "NonFiniteWeights": "stop",
        "AlphaBelow": "info",
        "AlphaAbove": "info",
        "SpectralNormGrowth": "info",
        "SpectralNormBlowUp": "log",
        "RankCollapse": "log",
        "TrapsAppeared": "log",
        "MeanAlphaTrend": "info",
        "GeneralizationGap": "log",
        "TrainingStalled": "log",
        "LayerFrozen": "log",
        "VanishingUpdates": "log",
        "WeightCollapse": "log",
    }


def _scalars(**values: float | None) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def test_generalization_gap_on_losses_needs_a_stalled_validation_loss_and_a_scale_free_rise():
    """Without accuracies: the validation loss must stop improving (patience 2) and rise above
    ``1 + loss_rise`` times its best while the training loss falls; the loss's units do not
    matter."""
    engine = AlertEngine([GeneralizationGap(loss_rise=0.5, patience=2)])
    fired = []
    series = [(2.3, 2.3), (1.2, 0.9), (1.0, 0.5), (1.2, 0.4), (1.6, 0.3), (1.7, 0.25),
              (None, 0.1), (0.9, 0.2), (1.4, 0.15), (1.6, 0.1)]
    for epoch, (val, train) in enumerate(series):
        for alert in engine.update(epoch, epoch * 10, [],
                                   training=_scalars(val_loss=val, train_loss=train)):
            fired.append((epoch, alert))
    # best 1.0 at epoch 2; 1.6 = 1.6x at epoch 4 after two analyses without improvement and a
    # falling train loss: fires; 1.7 holds; epoch 6 is missing (no evidence); a new best 0.9 at
    # 7 clears; 1.6 / 0.9 = 1.78x at 9 after two analyses without improvement: fires again
    assert [e for e, _ in fired] == [4, 9]
    epoch, alert = fired[0]
    assert alert.metric == "val_loss / best - 1" and alert.layer is None and alert.layers == ()
    assert alert.value == pytest.approx(0.6) and alert.threshold == 0.5
    assert alert.severity == "warning" and "1.6x its best 1" in alert.message
    assert "over-fitting" in alert.meaning and alert.advice
    scaled = AlertEngine([GeneralizationGap(loss_rise=0.5, patience=2)])
    got = [e for e, (val, train) in enumerate(series)
           if scaled.update(e, e * 10, [], training=_scalars(
               val_loss=None if val is None else 1000 * val, train_loss=1000 * train))]
    assert got == [4, 9]  # the same in other units
    silent = AlertEngine([GeneralizationGap()])
    for epoch in range(1, 4):  # no validation data: nothing to compare
        assert silent.update(epoch, epoch, [], training={"train_loss": 0.01}) == []


def test_generalization_gap_is_silent_while_the_validation_loss_keeps_falling():
    """A VAE: validation loss ~260 nats, 0.5 above the training loss, falling every epoch."""
    engine = AlertEngine([GeneralizationGap()])
    for epoch in range(1, 12):
        val = 300.0 - 4 * epoch
        assert engine.update(epoch, epoch, [], training={"val_loss": val,
                                                         "train_loss": val - 0.5}) == []


def test_generalization_gap_prefers_the_accuracy_gap_when_both_accuracies_are_logged():
    engine = AlertEngine([GeneralizationGap(acc_gap=0.15, patience=2)])
    train = [0.5, 0.8, 0.95, 0.99, 1.0, 1.0]
    val = [0.45, 0.62, 0.70, 0.69, 0.70, 0.70]
    fired = [e for e, (t, v) in enumerate(zip(train, val, strict=True), start=1)
             if engine.update(e, e, [], training={"train_acc": t, "val_acc": v,
                                                  "val_loss": 1.0, "train_loss": 0.1})]
    # val_acc best 0.70 at epoch 3, not improved at 4 and 5 with a gap 0.30 > 0.15: epoch 5
    assert fired == [5]
    healthy = AlertEngine([GeneralizationGap()])
    for e in range(1, 10):  # a 3-point gap at a plateau is generalisation, not over-fitting
        assert healthy.update(e, e, [], training={"train_acc": 1.0, "val_acc": 0.97}) == []


def test_generalization_gap_state_survives_a_resume():
    rule = GeneralizationGap(acc_gap=0.1, patience=1)
    engine = AlertEngine([rule])
    for e, (t, v) in enumerate([(0.9, 0.8), (1.0, 0.8)], start=1):
        raised = engine.update(e, e, [], training={"train_acc": t, "val_acc": v})
    assert len(raised) == 1
    resumed = AlertEngine([GeneralizationGap(acc_gap=0.1, patience=1)])
    resumed.load_state_dict(engine.state_dict())
    # still the same episode
    assert resumed.update(3, 3, [], training={"train_acc": 1.0, "val_acc": 0.8}) == []


# --------------------------------------------------------------------------- robustness
METRICS = ("alpha", "spectral_norm", "stable_rank", "matrix_rank", "num_traps", "alpha_hill")
value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1.0, 1e-300, 1e300, NAN, INF, -INF]),
    st.none(),
    st.text(max_size=3),
)
layer = st.builds(
    record,
    name=st.sampled_from(["a", "b", "c"]),
    mode=st.sampled_from(["unfold", "operator"]),
    reason=st.sampled_from([None, None, NONFINITE, "svd failed"]),
    **{m: value for m in METRICS},
)
analysis = st.tuples(
    st.integers(0, 3),  # epoch increment (0: same epoch, maybe same step)
    st.lists(layer, max_size=5),
    st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["alpha_mean", "alpha_mean/unfold", "x"]), value, max_size=3
        ),
        st.fixed_dictionaries({"operator": st.dictionaries(st.just("alpha_mean"), value)}),
    ),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(analysis, max_size=25))
def test_engine_never_raises_on_random_sequences(sequence):
    engine = AlertEngine(all_builtin_rules(), max_len=6)
    epoch = step = 0
    for increment, rep, summary in sequence:
        epoch += increment
        step += increment
        alerts = engine.update(epoch, step, Report(rep), summary)
        assert all(isinstance(a, Alert) and "raised" not in a.message for a in alerts)
    restored = AlertEngine(all_builtin_rules(), max_len=6)
    restored.load_state_dict(json.loads(json.dumps(engine.state_dict())))
    assert as_json(restored.alerts_so_far) == as_json(engine.alerts_so_far)


@pytest.mark.parametrize("module", ["base", "history", "engine"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"svd_callback.alerts.{module}"))
    assert result.attempted > 0 and result.failed == 0


def test_default_rules_blow_up_on_the_first_epoch_and_traps_only_when_computed():
    from svd_callback.alerts import AlertEngine, TrapsAppeared, default_rules

    assert not any(isinstance(r, TrapsAppeared) for r in default_rules(traps=False))
    assert any(isinstance(r, TrapsAppeared) for r in default_rules())
    engine = AlertEngine(default_rules(traps=False))

    def one(epoch: int, norm: float) -> Report:
        return Report([LayerReport("fc", "linear", "unfold",
                                   metrics={"spectral_norm": norm, "matrix_rank": 8.0})])

    assert engine.update(0, 0, one(0, 1.0)) == []
    healthy = AlertEngine(default_rules(traps=False))
    healthy.update(0, 0, one(0, 1.0))
    assert healthy.update(1, 10, one(1, 2.6)) == []  # healthy first-epoch growth (measured)
    fired = engine.update(1, 10, one(1, 15.0))  # a learning rate 10x too high
    assert [a.rule for a in fired] == ["SpectralNormBlowUp"]
    assert fired[0].severity == "warning"
