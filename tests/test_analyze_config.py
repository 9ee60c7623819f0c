"""analyze() takes its options as one AnalysisConfig: the same names as the callback, validated
once, legacy spellings mapped with a warning, and the class report as a declared field."""

from __future__ import annotations

import inspect
import math
import pickle
import typing
import warnings

import pytest
import torch
from torch import nn

from svd_callback import analyze
from svd_callback.classes import ClassReport, ProbeSet
from svd_callback.config import AnalysisConfig
from svd_callback.metric_groups import METRIC_GROUPS
from svd_callback.report import Report
from svd_callback.rmt import esd_metrics
from svd_callback.spectra import solver


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 40), nn.ReLU(), nn.Linear(40, 3),
    )


def rows(report: Report) -> list[tuple]:
    """Everything a record holds, NaN made comparable."""
    def clean(values: dict) -> dict:
        return {k: "nan" if isinstance(v, float) and math.isnan(v) else v
                for k, v in values.items()}

    return [(r.name, r.mode, r.normalization, r.quality, r.reason, r.matrix_shape,
             None if r.svals is None else r.svals.tolist(), clean(r.metrics), r.notes)
            for r in report]


def test_config_and_keyword_options_give_identical_records():
    options = dict(metrics=("norms", "powerlaw", "mp", "traps"), fit="hill", generator_seed=3,
                   normalization="per_row", input_size=8)
    by_keywords = analyze(net(), ("unfold", "operator"), **options)
    by_config = analyze(net(), config=AnalysisConfig(conv_mode=("unfold", "operator"),
                                                     **options))
    assert rows(by_keywords) == rows(by_config)
    assert {r.mode for r in by_config} == {"unfold", "operator"}


def test_legacy_flags_warn_at_the_callers_line_and_give_the_same_records():
    with pytest.warns(DeprecationWarning, match="metrics=True/False, mp_fit") as record:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        legacy = analyze(net(), mp_fit=True, traps=True, generator_seed=1)
    assert (record[0].filename, record[0].lineno) == (__file__, line)
    current = analyze(net(), metrics="all", generator_seed=1)
    assert rows(legacy) == rows(current)
    with pytest.warns(DeprecationWarning, match=r"fit=None\) without metrics") as record:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        no_fit = analyze(net(), fit=None)  # was "no power-law fit"
    assert (record[0].filename, record[0].lineno) == (__file__, line)
    assert rows(no_fit) == rows(analyze(net(), metrics="norms"))
    with pytest.warns(DeprecationWarning):
        bulk = analyze(net(), fit=None, mp_fit=True)
    assert rows(bulk) == rows(analyze(net(), metrics=("norms", "mp")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analyze(net(), "slices", metrics=("norms",), fit=None, chunk_elems=1 << 20)


def test_each_metric_group_gives_the_metrics_the_rmt_code_computes_for_it():
    model = net()
    weight = model[6].weight.detach().double()
    eigs = torch.linalg.svdvals(weight) ** 2  # an independent decomposition, raw lambda
    plain = esd_metrics(eigs, N=40, M=32, fit=None).values
    norms = analyze(model, metrics="norms").get("6")
    assert set(norms.metrics) == set(plain) and set(METRIC_GROUPS["norms"]) <= set(plain)
    for key, value in plain.items():
        assert norms.metrics[key] == pytest.approx(value, rel=1e-6), key  # float32 svals
    assert norms.quality is None and "alpha" not in norms.metrics
    full = analyze(model, metrics="all").get("6")
    assert not set(METRIC_GROUPS["motion"]) & set(full.metrics)  # needs a MotionTracker
    for group in (g for name, g in METRIC_GROUPS.items() if name != "motion"):
        assert set(group) - {"alpha_hill", "sigma_mp", "rand_distance_ww"} <= set(full.metrics)
    assert full.quality is not None
    spectral = torch.linalg.matrix_norm(weight, ord=2).item()
    assert full.metrics["spectral_norm"] == pytest.approx(spectral, rel=1e-6)


def test_unknown_names_raise_listing_every_valid_argument():
    with pytest.raises(TypeError, match="unexpected argument.*conv_modez") as error:
        analyze(net(), conv_modez="unfold")
    text = str(error.value)
    for name in ("conv_mode", "metrics", "fit", "chunk_elems", "embeddings", "config",
                 "input_sizes", "probe", "keep_svals"):
        assert name in text, name


def test_bad_values_raise_listing_the_valid_ones():
    groups = "'norms', 'powerlaw', 'mp', 'traps', 'motion', 'all'"
    with pytest.raises(ValueError, match=f"{groups}.*'typo'"):
        analyze(net(), metrics=("all", "typo"))
    with pytest.raises(ValueError, match="'unfold', 'operator', 'slices'.*'fft'"):
        analyze(net(), "fft")
    with pytest.raises(ValueError, match="chunk_elems"):
        analyze(net(), chunk_elems=0)
    with pytest.raises(ValueError, match="fit=None leaves the 'powerlaw' group"):
        analyze(net(), metrics=("norms", "powerlaw"), fit=None)


def test_config_beside_options_is_an_error():
    config = AnalysisConfig(metrics="norms")
    with pytest.raises(TypeError, match="config= and the option.*metrics"):
        analyze(net(), config=config, metrics="all")
    with pytest.raises(TypeError, match="conv_mode"):
        analyze(net(), "slices", config=config)
    with pytest.raises(TypeError, match="AnalysisConfig"):
        analyze(net(), config={"metrics": "norms"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="both 'conv_mode' and its deprecated name"):
        analyze(net(), "unfold", conv_modes="slices")


def test_chunk_elems_reaches_the_solver(monkeypatch):
    """Two same-shape linear layers are decomposed in one stacked call; a budget of one matrix
    per call splits it, with the same values."""
    calls: list[int] = []
    solve = solver._solve

    def spy(chunk, method):
        calls.append(int(chunk.shape[0]))
        return solve(chunk, method)

    monkeypatch.setattr(solver, "_solve", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.Linear(20, 10))
    whole = analyze(model, metrics="norms")
    assert calls == [2]
    calls.clear()
    split = analyze(model, metrics="norms", chunk_elems=200)
    assert calls == [1, 1]
    assert rows(whole) == rows(split)
    conv = nn.Conv2d(2, 4, 3)  # operator mode: 4 x 3 frequencies of (4 x 2) blocks
    calls.clear()
    analyze(conv, "operator", input_size=4, metrics="norms", chunk_elems=8)
    assert calls == [1] * 12


def test_operator_spectra_take_the_old_budget_name_with_a_warning():
    from svd_callback.spectra import operator_svdvals

    weight = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match="max_batch_elems"):
        old = operator_svdvals(weight, 6, max_batch_elems=16)
    assert torch.equal(old, operator_svdvals(weight, 6, chunk_elems=16))
    with pytest.raises(TypeError, match="both"):
        operator_svdvals(weight, 6, chunk_elems=16, max_batch_elems=16)


# ------------------------------------------------------------------ the class report
def digits_probe() -> ProbeSet:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(30, 3, 4, 4, generator=generator)
    labels = torch.arange(30) % 3
    return ProbeSet(inputs, labels, torch.arange(30))


def test_the_class_report_is_a_declared_field_of_the_report():
    hints = typing.get_type_hints(Report)
    assert hints["classes"] == ClassReport | None
    assert Report().classes is None
    report = analyze(net(), probe=digits_probe())
    assert isinstance(report.classes, ClassReport) and report.classes.num_classes == 3
    assert set(report.classes.layers) == {"0", "2", "6", "8"}  # the analysed layers
    for view in (report.analysed(), report.by_mode("unfold"), report.skipped()):
        assert view.classes is report.classes
    copy = pickle.loads(pickle.dumps(report))  # as the DDP gather sends it
    assert copy.classes.num_classes == 3 and rows(copy) == rows(report)
    assert analyze(net()).classes is None
    assert Report([], classes=report.classes).classes is report.classes
