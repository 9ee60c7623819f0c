"""Marchenko-Pastur bulk, spikes, correlation traps and ESD metrics on closed-form spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from svd_callback import Report, analyze
from svd_callback.rmt import (
    esd_metrics,
    fit_mp_bulk,
    js_distance,
    mp_edges,
    quality_label,
    shuffle_matrix,
    trap_matrix,
    trap_metrics,
)
from svd_callback.rmt.mp import mp_median


def gram_eigs(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.double()) ** 2


@pytest.mark.parametrize("N, M, scale", [(1000, 250, 1.0), (800, 400, 0.01), (500, 500, 3.0)])
def test_mp_edge_of_a_gaussian_matrix(N, M, scale):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, M, generator=g, dtype=torch.float64) * scale
    eigs = gram_eigs(w)
    fit = fit_mp_bulk(eigs, N / M, M)
    # entries of variance scale^2: s2 = N scale^2, lambda_+ = N scale^2 (1 + 1/sqrt(Q))^2
    expected_minus, expected_plus = mp_edges(N * scale**2, N / M)
    assert fit.reason is None
    assert math.isclose(fit.lambda_plus, expected_plus, rel_tol=0.03)
    assert math.isclose(fit.s2, N * scale**2, rel_tol=0.03)
    assert math.isclose(float(eigs.max()), expected_plus, rel_tol=0.05)
    assert fit.num_spikes == 0


def test_mp_median_matches_sampling():
    g = torch.Generator().manual_seed(1)
    for Q in (1.0, 2.0, 8.0):
        M = 600
        N = int(Q * M)
        eigs = gram_eigs(torch.randn(N, M, generator=g, dtype=torch.float64) / math.sqrt(N))
        assert math.isclose(float(eigs.median()), mp_median(Q), rel_tol=0.03)


def test_planted_spikes_are_counted():
    g = torch.Generator().manual_seed(2)
    N, M = 1000, 300
    w = torch.randn(N, M, generator=g, dtype=torch.float64) / math.sqrt(N)
    u = torch.linalg.qr(torch.randn(N, 3, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(M, 3, generator=g, dtype=torch.float64))[0]
    w = w + u @ torch.diag(torch.tensor([6.0, 5.0, 4.0], dtype=torch.float64)) @ v.T
    metrics = esd_metrics(gram_eigs(w), N=N, M=M, mp_fit=True)
    assert metrics.values["num_spikes"] == 3
    assert metrics.values["mp_softrank"] < 0.2


def test_traps_absent_in_gaussian_present_with_planted_entries():
    g = torch.Generator().manual_seed(3)
    N, M = 600, 200
    w = torch.randn(N, M, generator=g, dtype=torch.float64) / math.sqrt(N)
    shuffled = shuffle_matrix(w, torch.Generator().manual_seed(0))
    clean = trap_metrics(gram_eigs(w), gram_eigs(shuffled), N, M)
    assert clean["num_traps"] == 0 and clean["trap_max"] < 1.1
    trapped = w.clone()
    trapped[0, 0] = trapped[5, 7] = 40.0 / math.sqrt(N) * 10
    shuffled = shuffle_matrix(trapped, torch.Generator().manual_seed(0))
    bad = trap_metrics(gram_eigs(trapped), gram_eigs(shuffled), N, M)
    assert bad["num_traps"] >= 2 and bad["trap_max"] > 5
    assert 0 <= clean["rand_distance"] <= 1 and bad["rand_distance_ww"] >= 0


def shifted_gaussian(seed: int, mean_over_std: float, N: int = 64, M: int = 288) -> torch.Tensor:
    """An i.i.d. Gaussian N x M matrix of std 1/sqrt(M) and mean ``mean_over_std`` stds."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, M, generator=g, dtype=torch.float64) + mean_over_std) / math.sqrt(M)


def traps_of(w: torch.Tensor, seed: int, ww_compat: bool = False) -> dict:
    N, M = max(w.shape), min(w.shape)
    shuffled = trap_matrix(w, torch.Generator().manual_seed(seed), ww_compat=ww_compat)
    return trap_metrics(gram_eigs(w), gram_eigs(shuffled), N, M)


@pytest.mark.parametrize("mean_over_std", [0.2, 0.5])
def test_a_shifted_mean_is_no_trap_once_centred(mean_over_std):
    """An i.i.d. matrix has no correlations whatever its mean: the centred shuffle finds no trap
    in 5 of 5 draws, while the uncentred one (WeightWatcher's) sees the mean's rank-one spike,
    eigenvalue ~ N M mu^2 / M = 64 * 288 * 0.04 / 288 = 2.56 against the edge (1 + sqrt(64/288))^2
    = 2.16 at mean/std 0.2 (textbook spiked-Wishart arithmetic, unit variance)."""
    for seed in range(5):
        w = shifted_gaussian(seed, mean_over_std)
        assert traps_of(w, seed)["num_traps"] == 0
        uncentred = traps_of(w, seed, ww_compat=True)
        assert uncentred["num_traps"] >= 1 and uncentred["trap_max"] > 1


def test_centring_leaves_a_zero_mean_matrix_alone():
    for seed in range(5):
        w = shifted_gaussian(seed, 0.0)
        w = w - w.mean()
        centred, uncentred = traps_of(w, seed), traps_of(w, seed, ww_compat=True)
        assert centred == pytest.approx(uncentred, rel=1e-9)
        assert traps_of(w, seed)["num_traps"] == 0


@pytest.mark.parametrize("mean_over_std", [0.0, 0.5])
def test_a_block_of_repeated_entries_is_still_a_trap_after_centring(mean_over_std):
    """A 3 x 3 block of one large value (30 stds) is correlation-like structure the shuffle
    scatters into 9 isolated large entries, each adding ~ 30^2 / 288 = 3.1 to a row's squared
    norm of ~1: eigenvalues ~4 above the MP edge 2.16, found with or without a mean around it."""
    w = shifted_gaussian(7, mean_over_std)
    w[:3, :3] = w.mean() + 30.0 / math.sqrt(288)
    found = traps_of(w, 0)
    assert found["num_traps"] >= 3 and found["trap_max"] > 1.5


def test_trap_matrix_permutes_the_centred_entries():
    w = torch.arange(12.0).reshape(3, 4)
    centred = trap_matrix(w, torch.Generator().manual_seed(5))
    assert torch.allclose(centred.flatten().sort().values, w.flatten() - 5.5)
    assert torch.equal(trap_matrix(w, torch.Generator().manual_seed(5), ww_compat=True),
                       shuffle_matrix(w, torch.Generator().manual_seed(5)))


def test_shuffle_is_a_permutation_and_leaves_the_global_rng_alone():
    w = torch.arange(12.0).reshape(3, 4)
    state = torch.get_rng_state()
    s = shuffle_matrix(w, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(s.flatten().sort().values, w.flatten())
    assert torch.equal(s, shuffle_matrix(w, torch.Generator().manual_seed(5)))


def test_js_distance_bounds():
    a = torch.rand(500, generator=torch.Generator().manual_seed(0)) + 0.1
    assert js_distance(a, a) == 0.0
    assert math.isclose(js_distance(a, a * 1e6), 1.0, rel_tol=1e-9)


def test_metric_formulas_on_a_diagonal_spectrum():
    sv = torch.arange(1, 41, dtype=torch.float64)
    eigs = sv**2
    m = esd_metrics(eigs, N=40, M=40).values
    assert math.isclose(m["log_norm"], math.log10(float(eigs.sum())))
    assert math.isclose(m["log_spectral_norm"], math.log10(1600.0))
    assert math.isclose(m["stable_rank"], float(eigs.sum()) / 1600.0)
    assert m["matrix_rank"] == 40 and m["rank_loss"] == 0
    p = eigs / eigs.sum()
    assert math.isclose(m["entropy"], float(-(p * p.log()).sum() / math.log(40)), rel_tol=1e-12)
    assert math.isclose(m["alpha_weighted"], m["alpha"] * m["log_spectral_norm"])
    assert math.isclose(m["log_alpha_norm"],
                        math.log10(float((eigs ** m["alpha"]).sum())), rel_tol=1e-10)


@pytest.mark.parametrize("eigs, why", [
    (torch.zeros(0), "empty"),
    (torch.ones(50), "equal"),
    (torch.tensor([5.0] + [0.0] * 30), "rank"),
    (torch.tensor([3.0, 2.0, 1.0]), "fewer"),
    (torch.tensor([1.0, float("nan"), 2.0] * 5), "non-finite"),
    (torch.zeros(20), "zero"),
])
def test_degenerate_spectra_give_nan_and_a_reason(eigs, why):
    result = esd_metrics(eigs, N=64, M=max(1, eigs.numel()), mp_fit=True)
    assert math.isnan(result.values.get("alpha", math.nan))
    assert result.notes, why
    if result.fit is not None:
        assert quality_label(result.fit) == "undetermined"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1e6), st.just(float("nan")), st.just(float("inf"))),
                max_size=120),
       st.booleans(), st.booleans())
def test_never_raises(values, ww, mp):
    eigs = torch.tensor(values, dtype=torch.float64)
    n = max(1, eigs.numel())
    result = esd_metrics(eigs, N=2 * n, M=n, ww_compat=ww, mp_fit=mp)
    for key, value in result.values.items():
        assert isinstance(value, float), key
        if math.isnan(value):
            assert key in result.notes or "all" in result.notes or "alpha" in result.notes


def test_metrics_run_on_numpy_input_too():
    eigs = np.sort(np.random.default_rng(0).pareto(2.5, 300) + 1)
    assert math.isfinite(esd_metrics(torch.from_numpy(eigs), N=600, M=300).values["alpha"])


def test_too_few_eigenvalues_get_no_fit_outside_compat_mode():
    eigs = torch.tensor([9.0, 5, 4, 3, 2.5, 2, 1.5, 1.2, 1.0], dtype=torch.float64)
    ours = esd_metrics(eigs, N=16, M=9)
    assert math.isnan(ours.values["alpha"]) and "too few eigenvalues" in ours.notes["alpha"]
    assert ours.quality == "undetermined"
    assert math.isfinite(ours.values["stable_rank"])
    compat = esd_metrics(eigs, N=16, M=9, ww_compat=True)
    assert compat.values["alpha"] > 1  # WeightWatcher fits from 8 eigenvalues on


@pytest.mark.parametrize("fit", ["ks", "hill", None])
@pytest.mark.parametrize("mp", [False, True])
def test_every_spectrum_reports_the_same_metric_keys(fit, mp):
    good = torch.from_numpy(np.random.default_rng(1).pareto(2.0, 200) + 1)
    expected = set(esd_metrics(good, N=400, M=200, fit=fit, mp_fit=mp).values)
    base = {"spectral_norm", "frobenius_norm", "log_norm", "log_spectral_norm", "stable_rank",
            "matrix_rank", "rank_loss", "entropy"}
    assert base <= expected
    assert ("alpha" in expected) == (fit is not None)
    assert ("alpha_hill" in expected) == (fit == "hill")
    assert ("num_spikes" in expected) == mp
    for bad in (torch.zeros(0), torch.zeros(30), torch.tensor([1.0, float("inf")] * 10)):
        result = esd_metrics(bad, N=60, M=30, fit=fit, mp_fit=mp)
        assert set(result.values) == expected and "all" in result.notes


def test_analyze_centres_before_shuffling_unless_ww_compat():
    """The same shifted-mean i.i.d. layer through :func:`svd_callback.analyze`: no trap by
    default, the mean's spike with ``ww_compat=True``."""
    from svd_callback import analyze

    layer = torch.nn.Linear(288, 64, bias=False)
    with torch.no_grad():
        layer.weight.copy_(shifted_gaussian(0, 0.5).float())
    model = torch.nn.Sequential(layer)
    default = list(analyze(model, traps=True))[0].metrics
    compat = list(analyze(model, traps=True, ww_compat=True))[0].metrics
    assert default["num_traps"] == 0
    assert compat["num_traps"] >= 1


def test_quality_label_needs_alpha_beyond_its_limit_by_two_standard_errors():
    from svd_callback.rmt.metrics import QualityThresholds
    from svd_callback.rmt.powerlaw import PowerLawFit

    def fit(alpha, sigma):
        return PowerLawFit(alpha=alpha, xmin=1.0, xmax=10.0, D=0.05, sigma=sigma, n_tail=40.0,
                           n_eigs=64, method="ks")
    assert quality_label(fit(1.998, 0.17)) == "ok"
    assert quality_label(fit(1.5, 0.1)) == "over-trained"
    assert quality_label(fit(6.5, 1.7)) == "ok"
    assert quality_label(fit(7.9, 0.5)) == "under-trained"
    assert quality_label(fit(1.998, 0.17), QualityThresholds(confidence=0.0)) == "over-trained"
    assert quality_label(fit(1.998, math.nan)) == "over-trained"  # no error known: plain rule
    # labels are judged on matrices of >= 100 eigenvalues only, as the alpha rules
    assert quality_label(fit(1.5, 0.1), n_eigs=64) == "undetermined"
    assert quality_label(fit(1.5, 0.1), n_eigs=100) == "over-trained"
    assert quality_label(fit(1.5, 0.1), QualityThresholds(min_eigs=0), n_eigs=8) == "over-trained"


def test_small_layers_get_no_alpha_label_and_say_why():
    model = nn.Sequential(nn.Linear(300, 64), nn.ReLU(), nn.Linear(64, 1), nn.Linear(1, 300),
                          nn.Linear(300, 120))
    report = analyze(model)
    small, large = report.get("0"), report.get("4")
    assert small.quality == "undetermined" and "64 eigenvalues per analysed matrix" in \
        small.notes["quality"]
    assert large.quality != "undetermined" and "quality" not in large.notes
    assert report.quality_reasons() == [f"0 [unfold] quality undetermined: "
                                        f"{small.notes['quality']}"]


def test_a_random_network_looks_untrained_and_a_low_rank_one_does_not():
    """The stable-rank ratio against sampled matrices: Gaussian and Kaiming-uniform weights
    sit at 1.0-1.3 x N M / (sqrt N + sqrt M)^2; a rank-3 weight far below."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                          nn.Conv2d(3, 64, 3))
    report = analyze(model, conv_mode=("unfold", "operator"), input_size=8)
    ratios = report.stable_rank_ratios()
    assert set(ratios) == {"0", "2", "3"}
    assert all(0.95 < r < 1.35 for r in ratios.values()), ratios
    assert report.looks_untrained() is True
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(128, 3) @ torch.randn(3, 256))
    trained = analyze(model)
    assert trained.stable_rank_ratios()["2"] < 0.2 and trained.looks_untrained() is False
    assert Report().looks_untrained() is None  # nothing to read
