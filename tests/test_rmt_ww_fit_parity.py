"""Metric-level parity with WeightWatcher 0.7.7 on the same eigenvalues.

WeightWatcher's own functions are called directly on eigenvalue arrays (``fit_powerlaw``,
``apply_norm_metrics``, ``jensen_shannon_distance``) and on its own per-layer ESDs
(:func:`ww_eigenvalues_per_layer`, which runs the first half of ``WeightWatcher.analyze``); the
``ww_compat`` results must be bit-identical.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from svd_callback.rmt import esd_metrics, fit_power_law

ww = pytest.importorskip("weightwatcher")
from weightwatcher import RMT_Util, constants  # noqa: E402

logging.getLogger("weightwatcher").setLevel(logging.ERROR)

NORM_KEYS = ("log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm", "stable_rank",
             "entropy", "matrix_rank")


@pytest.fixture(scope="module")
def watcher():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ww.WeightWatcher()


def ww_fit(watcher, evals: np.ndarray, **kwargs) -> dict[str, float]:
    """``WeightWatcher.fit_powerlaw`` (floor 1e-5 then ``WWFit``), quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alpha, _, xmin, _, D, sigma, spikes, *_ = watcher.fit_powerlaw(
            np.sort(evals), plot=False, savefig=False, **kwargs)
    return {"alpha": alpha, "xmin": xmin, "D": D, "sigma": sigma, "n_tail": spikes}


class _Layer:
    """The attributes ``WeightWatcher.apply_norm_metrics`` reads and writes."""

    def __init__(self, evals: np.ndarray, alpha: float, N: int) -> None:
        self.evals, self.alpha, self.N = evals, alpha, N
        self.layer_id = self.plot_id = 0
        self.name = "layer"

    def add_column(self, name: str, value) -> None:
        setattr(self, name, value)


def ww_norm_metrics(watcher, evals: np.ndarray, alpha: float, N: int) -> dict[str, float]:
    layer = _Layer(np.sort(evals), alpha, N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watcher.apply_norm_metrics(layer)
    return {key: float(getattr(layer, key)) for key in NORM_KEYS}


def ww_eigenvalues_per_layer(model: nn.Module) -> list[dict]:
    """The ESD of every layer exactly as ``WeightWatcher.analyze()`` builds it (default
    arguments): its layer iterator and skip rules, ``apply_normalize_Wmats`` (conv2d_norm),
    ``apply_esd`` (``combined_eigenvalues``). One dict per analysed layer: name, evals (sorted,
    float64), N, M, rf and the number of weight matrices (slices)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watcher = ww.WeightWatcher(model=model)
        params = constants.DEFAULT_PARAMS.copy()
        layers = []
        for layer in watcher.make_layer_iterator(model=model, params=params):
            watcher.apply_normalize_Wmats(layer, params)
            watcher.apply_esd(layer, params)
            layers.append({"name": layer.name, "evals": layer.evals, "N": layer.N,
                           "M": layer.M, "rf": layer.rf, "num_W": len(layer.Wmats),
                           "w_norm": layer.w_norm})
    return layers


def synthetic_spectra() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((600, 300)) / math.sqrt(600)
    heavy = rng.standard_t(2.5, (800, 400)) / math.sqrt(800)
    ties = np.round(rng.pareto(2.0, 400) + 1, 2)
    with_zeros = np.concatenate([np.zeros(40), 1e-7 * rng.random(10), rng.pareto(3.0, 300) + 1])
    return {
        "pareto-2": rng.pareto(1.0, 500) + 1,
        "pareto-3-n3000": (1 - rng.random(3000)) ** (-1 / 2.0),
        "pareto-5": rng.pareto(4.0, 200) + 1,
        "mp": np.linalg.svd(gauss, compute_uv=False) ** 2,
        "heavy": np.linalg.svd(heavy, compute_uv=False) ** 2,
        "ties": ties,
        "below-floor": with_zeros,
        "n20": rng.pareto(2.0, 20) + 1,
        **{f"small-n{n}": rng.pareto(2.0, n) + 1 for n in (8, 9, 13, 19)},
        "small-flat": np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]),
    }


SPECTRA = synthetic_spectra()


@pytest.mark.parametrize("name", list(SPECTRA))
def test_fit_is_bit_identical_to_weightwatcher(watcher, name):
    evals = SPECTRA[name]
    theirs = ww_fit(watcher, evals)
    ours = fit_power_law(torch.from_numpy(evals), ww_compat=True)
    assert ours.reason is None
    assert (ours.alpha, ours.D, ours.xmin, ours.sigma, ours.n_tail) == (
        theirs["alpha"], theirs["D"], theirs["xmin"], theirs["sigma"], theirs["n_tail"]), name
    assert ours == fit_power_law(torch.from_numpy(evals), ww_compat=True, prune=False)


def test_top_k_clip_is_weightwatchers_negative_xmax(watcher):
    evals = SPECTRA["heavy"]
    theirs = ww_fit(watcher, evals, xmax=-3)
    ours = fit_power_law(evals, ww_compat=True, top_k_clip=3)
    assert (ours.alpha, ours.D, ours.xmin, ours.n_tail) == (
        theirs["alpha"], theirs["D"], theirs["xmin"], theirs["n_tail"])


@pytest.mark.parametrize("name", ["mp", "heavy", "ties", "below-floor", "small-n13"])
def test_norm_metrics_are_bit_identical_to_weightwatcher(watcher, name):
    evals = SPECTRA[name]
    N = 2 * evals.size
    ours = esd_metrics(torch.from_numpy(evals), N=N, M=evals.size, ww_compat=True)
    theirs = ww_norm_metrics(watcher, evals, ww_fit(watcher, evals)["alpha"], N)
    for key in NORM_KEYS:
        assert ours.values[key] == theirs[key], (key, ours.values[key], theirs[key])


def test_failure_convention_matches_weightwatcher(watcher):
    evals = np.array([1e-7] * 30 + [2.0])  # one eigenvalue above the floor: WWFit raises
    theirs = ww_fit(watcher, evals)
    ours = fit_power_law(evals, ww_compat=True)
    assert theirs["alpha"] == ours.alpha == -1 and theirs["D"] == ours.D == -1
    assert ours.reason


def tiny_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 24, 3), nn.ReLU(), nn.Conv2d(24, 16, 3), nn.ReLU(),
                        nn.Conv2d(16, 12, 2), nn.Flatten(), nn.LazyLinear(10))
    cnn(torch.zeros(1, 3, 9, 9))
    mlp = nn.Sequential(nn.Linear(64, 200), nn.ReLU(), nn.Linear(200, 120), nn.ReLU(),
                        nn.Linear(120, 10))
    trained = nn.Sequential(nn.Linear(64, 200), nn.ReLU(), nn.Linear(200, 120), nn.ReLU(),
                            nn.Linear(120, 10))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 64, generator=g)
    y = (x[:, :10] @ torch.randn(10, 10, generator=g)).argmax(1)
    opt = torch.optim.SGD(trained.parameters(), lr=0.5)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(trained(x), y).backward()
        opt.step()
    return {"cnn": cnn, "mlp": mlp, "trained-mlp": trained}


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.mark.parametrize("which", ["cnn", "mlp", "trained-mlp"])
def test_real_layer_spectra_are_bit_identical(watcher, models, which):
    model = models[which]
    layers = ww_eigenvalues_per_layer(model)
    assert layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = ww.WeightWatcher(model=model).analyze()
    assert list(frame["name"]) == [layer["name"] for layer in layers]
    for layer, (_, row) in zip(layers, frame.iterrows(), strict=True):
        evals = layer["evals"]
        ours = esd_metrics(torch.from_numpy(evals), N=layer["N"], M=layer["M"], ww_compat=True)
        for key, theirs in (("alpha", row.alpha), ("D", row.D), ("xmin", row.xmin),
                            ("n_tail", row.num_pl_spikes), ("alpha_sigma", row.sigma)):
            assert ours.values[key] == float(theirs), (layer["name"], key)
        for key in NORM_KEYS:
            assert ours.values[key] == float(row[key]), (layer["name"], key)


@pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2, reason=(
    "under NumPy 1.x value-based promotion (before NEP 50) a float32 array times a float64 "
    "scalar stays float32, so WeightWatcher 0.7.7's ESD carries float32 rounding"))
def test_how_weightwatcher_builds_its_esd(models):
    """Linear: lambda = svd(W.double())^2, W as stored (out x in; transposition does not change
    singular values), N = max, M = min. Conv2d (pooled, the default): the kh*kw slices
    W[:, :, i, j] (out x in, transposed when out < in), each multiplied by sqrt(1/2)
    (``conv2d_norm``, w_norm = sqrt(conv2d_count / 2) with conv2d_count = 1) in float64, all
    their squared singular values pooled and sorted. Both: float32 weights cast to float64,
    ``scipy.linalg.svd(compute_uv=False)`` (LAPACK gesdd) on CPU."""
    for which in ("cnn", "mlp"):
        model = models[which]
        modules = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
        layers = ww_eigenvalues_per_layer(model)
        assert len(layers) == len(modules)
        for module, layer in zip(modules, layers, strict=True):
            w = module.weight.detach().double()
            if w.ndim == 4:
                slices = w.permute(2, 3, 0, 1) * math.sqrt(0.5)
                expected = (torch.linalg.svdvals(slices) ** 2).flatten().sort().values
                assert layer["rf"] == w.shape[2] * w.shape[3]
                assert layer["num_W"] == layer["rf"]
                assert layer["w_norm"] == math.sqrt(0.5)
            else:
                expected = (torch.linalg.svdvals(w) ** 2).sort().values
                assert layer["rf"] == 1 and layer["num_W"] == 1
            assert layer["evals"].dtype == np.float64
            np.testing.assert_allclose(layer["evals"], expected.numpy(),
                                       rtol=1e-12, atol=1e-13 * float(expected.max()))


def test_weightwatcher_swaps_N_and_M_for_even_kernels_with_fewer_outputs():
    """conv2D_Wmats swaps N and M once per slice when out < in, so an even number of slices
    (2x2 kernels) leaves N < M: N is then the smaller dimension in its rank tolerance and Q."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 8, 2), nn.Conv2d(16, 8, 3))
    layers = ww_eigenvalues_per_layer(nn.Sequential(model[0]))
    assert (layers[0]["N"], layers[0]["M"]) == (8, 16)
    assert layers[0]["evals"].size == 4 * 8
    layers = ww_eigenvalues_per_layer(nn.Sequential(model[1]))
    assert (layers[0]["N"], layers[0]["M"]) == (16, 8)


def test_rand_distance_ww_is_weightwatchers_jensen_shannon():
    from svd_callback.rmt.traps import js_distance_ww

    rng = np.random.default_rng(3)
    a = np.sort(rng.pareto(2.0, 300) + 1)
    b = np.sort(rng.random(300) * 3)
    assert js_distance_ww(a, b) == RMT_Util.jensen_shannon_distance(a, b)
