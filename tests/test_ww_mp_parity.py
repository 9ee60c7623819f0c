"""WeightWatcher 0.7.7's Marchenko-Pastur fit (the ``"mp"`` metric group of ``analyze``) under
ww_compat=True, layer by layer against WeightWatcher itself, and against the closed-form MP edge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import train_on_digits
from helpers import ww_frame as helpers_ww_frame
from torch import nn

from svd_callback import analyze
from svd_callback.rmt import esd_metrics
from svd_callback.rmt import ww_compat as ww_ref

ww = pytest.importorskip("weightwatcher")
RMT_Util = pytest.importorskip("weightwatcher.RMT_Util")

MP_METRICS = ("num_spikes", "mp_softrank", "sigma_mp", "num_pl_spikes")
REL = 1e-3
MP = ("norms", "powerlaw", "mp")
"""The metric groups of WeightWatcher's analyze(mp_fit=True): norms, the fit, the MP bulk."""


def ww_frame(model: nn.Module):
    return helpers_ww_frame(model, mp_fit=True)


def assert_mp_parity(model: nn.Module, theirs=None, **options) -> dict[str, float]:
    """Every analysed layer equals WeightWatcher's row (``theirs``: its frame, computed if not
    given) to REL; returns each metric's largest relative gap."""
    theirs = ww_frame(model) if theirs is None else theirs
    ours = analyze(model, "slices", ww_compat=True, metrics=MP, **options).analysed()
    assert [r.name for r in ours] == list(theirs["name"].astype(str))
    gaps: dict[str, float] = {}
    for record, (_, row) in zip(ours, theirs.iterrows(), strict=True):
        assert "WeightWatcher 0.7.7 mp_fit" in record.notes["mp_fit"]
        for metric in (*MP_METRICS, "bulk_max"):
            key = "lambda_plus" if metric == "bulk_max" else metric
            a, b = record.metrics[key], float(row[metric])
            assert b != -1, (record.name, metric, "WeightWatcher's fit failed")
            assert math.isclose(a, b, rel_tol=REL), (record.name, metric, a, b)
            gaps[metric] = max(gaps.get(metric, 0.0), abs(a - b) / abs(b) if b else abs(a))
    return gaps


def digits_cnn() -> nn.Module:
    """Three convs (Q = 16, 2 and 1 per slice) and two linears, three epochs on digits."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )
    return train_on_digits(model)


@pytest.fixture(scope="module")
def trained_and_frame():
    model = digits_cnn()
    return model, ww_frame(model)


@pytest.mark.parametrize("svd_method", ["auto", "gram"])
def test_trained_cnn_matches_weightwatcher(trained_and_frame, svd_method):
    """Spikes on the trained convs (20 and 55 measured), Q = 1 (quarter-circle branch)."""
    model, theirs = trained_and_frame
    assert max(assert_mp_parity(model, theirs, svd_method=svd_method).values()) < REL
    compat = analyze(model, "slices", ww_compat=True, metrics=MP).analysed()
    assert sum(r.metrics["num_spikes"] for r in compat) >= 20


def gaussian(rows: int, cols: int, std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, cols, generator=generator, dtype=torch.float64) * std


def gaussian_layers() -> tuple[nn.Sequential, list[float]]:
    """Five Gaussian linears (Q = 4, 2, 1, 8, 3), a spiked one, a Gaussian 3 x 3 conv; and the
    linears' noise variances."""
    g = torch.Generator().manual_seed(0)
    shapes = [(400, 100), (300, 150), (256, 256), (400, 50), (100, 300)]
    layers, noise_var = [], []
    for rows, cols in shapes:
        layer = nn.Linear(cols, rows, bias=False)
        layer.weight.data = gaussian(rows, cols, 0.05, g).float()
        layers.append(layer)
        noise_var.append(0.05**2)
    rows, cols = 300, 100
    u = torch.linalg.qr(gaussian(rows, 3, 1.0, g))[0]
    v = torch.linalg.qr(gaussian(cols, 3, 1.0, g))[0]
    signal = u @ torch.diag(torch.tensor([3.0, 2.5, 2.0], dtype=torch.float64)) @ v.T
    spiked = nn.Linear(cols, rows, bias=False)
    spiked.weight.data = (gaussian(rows, cols, 1.0, g) + signal * math.sqrt(rows)).float()
    layers.append(spiked)
    noise_var.append(1.0)
    conv = nn.Conv2d(64, 128, 3, bias=False)  # 9 pooled 128 x 64 slices, each MP
    conv.weight.data = torch.randn(128, 64, 3, 3, generator=g) * 0.05
    return nn.Sequential(*layers, conv), noise_var


def test_random_matrices_match_weightwatcher_and_the_closed_form_edge():
    """Gaussian weights (entry variance v): eigenvalues of W^T W follow MP with scale N v, edge
    lambda_plus = N v (1 + Q^(-1/2))^2; WeightWatcher's fit recovers it within 5% and finds no
    spike; a rank-3 signal with singular values (3, 2.5, 2) sqrt(N) (far above the BBP
    threshold (N M)^(1/4)) gives exactly 3 spikes over the noise's edge."""
    model, noise_var = gaussian_layers()
    assert max(assert_mp_parity(model, svd_method="gram").values()) < REL
    records = analyze(model, "slices", ww_compat=True, metrics=MP).analysed()
    for record, var in zip(records[:-1], noise_var, strict=True):
        n, m = record.matrix_shape
        edge = n * var * (1 + (n / m) ** -0.5) ** 2
        assert record.metrics["lambda_plus"] == pytest.approx(edge, rel=0.05), record.name
    assert [r.metrics["num_spikes"] for r in records] == [0.0] * 5 + [3.0, 0.0]
    for record in records[:5] + records[6:]:  # rescaled to mean 1 = the MP scale sigma^2
        assert record.metrics["sigma_mp"] == pytest.approx(1.0, abs=0.03), record.name


@pytest.mark.parametrize("case", ["mp", "quarter-circle", "heavy-tail"])
def test_bulk_fit_equals_fit_density_with_range(case):
    """``fit_mp_sigma`` (KDE computed once) against WeightWatcher's own function (which refits
    the KDE at every sigma), and the KDE against scikit-learn's ``KernelDensity``."""
    from sklearn.neighbors import KernelDensity

    rng = np.random.default_rng(3)
    rows, cols = {"mp": (180, 60), "quarter-circle": (70, 70), "heavy-tail": (150, 100)}[case]
    w = rng.standard_normal((rows, cols))
    if case == "heavy-tail":
        w = rng.standard_t(2.5, (rows, cols))
    evals = np.linalg.svd(w, compute_uv=False) ** 2
    evals *= evals.size / evals.sum()
    Q = rows / cols
    assert ww_ref.fit_mp_sigma(evals, Q) == RMT_Util.fit_density_with_range(evals, Q)[0]
    points = np.linspace(0, evals.max() + 0.5, 1000)
    kde = KernelDensity(kernel="linear", bandwidth=0.1).fit(evals[:, None])
    reference = np.exp(kde.score_samples(points[:, None]))
    np.testing.assert_allclose(ww_ref.linear_kde(evals, points, 0.1), reference,
                               rtol=1e-12, atol=1e-300)


def test_own_fit_stays_the_default_and_reports_no_weightwatcher_keys():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(60, 200), nn.ReLU(), nn.Linear(200, 10))
    for record in analyze(model, metrics=MP).analysed():
        assert "sigma_mp" not in record.metrics and "mp_fit" not in record.notes
        assert record.metrics["num_spikes"] == 0 and record.metrics["mp_s2"] > 0
    compat = analyze(model, "slices", ww_compat=True, metrics=MP).analysed()
    assert all(r.metrics["sigma_mp"] > 0 for r in compat)


def test_compat_mp_keys_are_the_same_for_every_spectrum():
    good = torch.from_numpy(np.random.default_rng(1).pareto(2.0, 200) + 1)
    expected = set(esd_metrics(good, N=400, M=200, ww_compat=True, mp_fit=True).values)
    assert {"sigma_mp", "num_pl_spikes", "num_spikes", "mp_softrank", "mp_s2"} <= expected
    plain = set(esd_metrics(good, N=400, M=200, ww_compat=True).values)
    assert "num_pl_spikes" in plain and "sigma_mp" not in plain
    for bad in (torch.zeros(0), torch.zeros(30), torch.tensor([1.0, float("inf")] * 10)):
        result = esd_metrics(bad, N=60, M=30, ww_compat=True, mp_fit=True)
        assert set(result.values) == expected and "all" in result.notes


def test_logged_mp_descriptions_name_the_fit():
    from svd_callback.sinks import tags

    compat = tags.metric_description("num_spikes", "slices", "ww", "ks", ww_compat=True)
    own = tags.metric_description("num_spikes", "slices", "ww", "ks", ww_compat=False)
    assert "WeightWatcher 0.7.7 mp_fit" in compat and "quantile fit" in own
    assert "MP bulk" not in tags.metric_description("alpha", "slices", "ww", "ks", True)


def test_a_spectrum_weightwatcher_cannot_fit_gives_nan_and_its_reason():
    """sum(lambda) overflows: W_scale = 0, WeightWatcher's sigma grid is empty and its mp_fit
    raises (it reports -1); here NaN with the error, the other metrics still computed."""
    evals = np.full(20, 1e307)
    evals[0] = 1.5e308
    watcher = ww.WeightWatcher()
    with pytest.raises(ValueError):
        watcher.mp_fit(evals, 40, 20, 1, "layer", 0, 0, False, False, ".", "b", 0.5, True, evals)
    result = esd_metrics(torch.from_numpy(evals), N=40, M=20, ww_compat=True, mp_fit=True)
    for key in ("num_spikes", "mp_softrank", "sigma_mp", "lambda_plus", "mp_s2"):
        assert math.isnan(result.values[key])
        assert "WeightWatcher's mp_fit fails here (ValueError" in result.notes[key]
    assert result.values["log_spectral_norm"] == pytest.approx(math.log10(1.5e308))
