"""The typed configuration: resolution, errors that list the valid values, legacy names."""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from svd_callback.config import (
    CONV_MODES,
    EPOCH_HOOKS,
    FITS,
    LEGACY_NAMES,
    NORMALIZATIONS,
    SVD_METHODS,
    AnalysisConfig,
    MonitorConfig,
    check_layer_names,
    rename_legacy,
)
from svd_callback.metric_groups import METRIC_GROUPS, expand_metric_groups

GROUPS = ("norms", "powerlaw", "mp", "traps", "motion")


def assert_lists(error: pytest.ExceptionInfo, option: str, bad: object, valid) -> None:
    """The message names the option, the bad value and every valid value."""
    text = str(error.value)
    assert option in text
    assert repr(bad) in text
    for value in valid:
        assert repr(value) in text, (value, text)


# ---------------------------------------------------------------------------- option types
def test_literal_types_name_the_values_the_package_accepts_today():
    from svd_callback.report import CONV_MODES as REPORT_MODES
    from svd_callback.report import NORMALIZATIONS as REPORT_NORMALIZATIONS
    from svd_callback.spectra import SVD_METHODS as SPECTRA_METHODS

    assert CONV_MODES == REPORT_MODES == ("unfold", "operator", "slices")
    assert NORMALIZATIONS == REPORT_NORMALIZATIONS == ("raw", "ww", "per_row")
    assert FITS == ("ks", "hill")
    assert SVD_METHODS == SPECTRA_METHODS == ("auto", "svd", "gram", "gram32")
    assert EPOCH_HOOKS == ("train_epoch_end", "validation_epoch_end")


def test_the_default_history_file_is_the_sinks_file_name():
    from svd_callback.config import DEFAULT_HISTORY_FILE
    from svd_callback.sinks.history import HISTORY_FILENAME

    assert DEFAULT_HISTORY_FILE == HISTORY_FILENAME == "spectral_history.jsonl"


def test_metric_group_table_is_the_sinks_table_and_every_metric_is_described():
    from svd_callback.sinks.tags import METRIC_DESCRIPTIONS
    from svd_callback.sinks.tags import METRIC_GROUPS as SINK_GROUPS

    assert METRIC_GROUPS == SINK_GROUPS  # the same content until the sinks import the core's
    assert tuple(METRIC_GROUPS) == GROUPS
    for names in METRIC_GROUPS.values():
        assert set(names) <= set(METRIC_DESCRIPTIONS)


def test_each_group_names_metrics_the_rmt_code_computes_with_that_group_on():
    from svd_callback.rmt import esd_metrics, trap_metrics

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(200, 100, generator=gen, dtype=torch.float64)
    eigs = torch.linalg.svdvals(w) ** 2
    plain = set(esd_metrics(eigs, N=200, M=100, fit=None).values)
    fitted = {key for fit in FITS for key in esd_metrics(eigs, N=200, M=100, fit=fit).values}
    bulk = {  # the project's MP fit, and WeightWatcher's (which adds sigma_mp)
        key
        for compat in (False, True)
        for key in esd_metrics(eigs, N=200, M=100, fit=None, mp_fit=True, ww_compat=compat).values
    }
    shuffled = torch.linalg.svdvals(w.flatten()[torch.randperm(w.numel(), generator=gen)]
                                    .reshape(200, 100)) ** 2
    traps = set(trap_metrics(eigs, shuffled, 200, 100))
    assert set(METRIC_GROUPS["norms"]) <= plain
    assert set(METRIC_GROUPS["powerlaw"]) <= fitted - plain
    assert set(METRIC_GROUPS["mp"]) <= bulk - plain
    assert set(METRIC_GROUPS["traps"]) <= traps


# ---------------------------------------------------------------------------- defaults
def test_defaults_are_those_of_the_callback_and_analyze_today():
    config = MonitorConfig()
    analysis = config.analysis
    assert analysis.conv_mode == ("unfold",) and analysis.primary_mode == "unfold"
    assert analysis.metrics == ("norms", "powerlaw", "motion")
    assert (analysis.normalization, analysis.fit, analysis.svd_method) == ("raw", "ks", "auto")
    assert (analysis.mp_fit, analysis.traps, analysis.ww_compat) == (False, False, False)
    assert analysis.include is None and analysis.exclude is None
    assert analysis.input_size is None and analysis.generator_seed == 0
    assert analysis.chunk_elems == 1 << 22
    assert (config.every_n_epochs, config.every_n_steps, config.check_on) == (1, None, None)
    assert (config.log_init, config.histograms, config.stop_on_alert) == (True, True, True)
    assert (config.figures_every_n, config.figure_layers) == (10, 3)
    assert config.history_file == "spectral_history.jsonl"


def test_config_is_frozen_hashable_and_compares_by_resolved_value():
    a = AnalysisConfig(conv_mode="unfold", metrics="all")
    b = AnalysisConfig(conv_mode=["unfold"],
                       metrics=["norms", "powerlaw", "mp", "traps", "motion"])
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.fit = "hill"  # type: ignore[misc]
    assert MonitorConfig(analysis=a) == MonitorConfig(analysis=b)


# ---------------------------------------------------------------------------- resolution
@pytest.mark.parametrize(
    ("normalization", "ww_compat", "expected"),
    [(None, False, "raw"), (None, True, "ww"), ("ww", True, "ww"), ("ww", False, "ww"),
     ("per_row", False, "per_row"), ("raw", False, "raw")],
)
def test_normalization_default_is_raw_or_ww_with_ww_compat(normalization, ww_compat, expected):
    config = AnalysisConfig(normalization=normalization, ww_compat=ww_compat)
    assert config.normalization == expected


@pytest.mark.parametrize("normalization", ["raw", "per_row"])
def test_ww_compat_with_another_normalization_is_an_error(normalization):
    with pytest.raises(ValueError, match=f"ww_compat=True implies.*'{normalization}'"):
        AnalysisConfig(normalization=normalization, ww_compat=True)


@pytest.mark.parametrize("svd_method", SVD_METHODS)
@pytest.mark.parametrize("ww_compat", [False, True])
def test_svd_method_resolves_as_analyze_resolves_it(svd_method, ww_compat):
    # "auto" is WeightWatcher's float32 Gram under ww_compat, every other choice stays as given
    expected = "gram32" if svd_method == "auto" and ww_compat else svd_method
    config = AnalysisConfig(svd_method=svd_method, ww_compat=ww_compat)
    assert config.svd_method == expected


@pytest.mark.parametrize(
    ("metrics", "fit", "expected"),
    [(("norms", "powerlaw"), "hill", "hill"), ("all", "ks", "ks"), ("norms", "ks", None),
     (("norms", "mp"), None, None), (("mp",), "hill", None)],
)
def test_fit_is_kept_only_with_the_powerlaw_group(metrics, fit, expected):
    assert AnalysisConfig(metrics=metrics, fit=fit).fit == expected


@pytest.mark.parametrize("metrics", [("norms", "powerlaw"), "all", "powerlaw"])
def test_powerlaw_group_without_a_fit_is_an_error_that_says_what_to_do(metrics):
    with pytest.raises(ValueError, match="fit=None") as error:
        AnalysisConfig(metrics=metrics, fit=None)
    assert "'ks'" in str(error.value) and "'hill'" in str(error.value)


def test_groups_select_the_flags_and_the_metric_names():
    config = AnalysisConfig(metrics=("traps", "norms", "traps"))
    assert config.metrics == ("traps", "norms")
    assert (config.traps, config.mp_fit, config.fit) == (True, False, None)
    assert config.metric_names == (*METRIC_GROUPS["traps"], *METRIC_GROUPS["norms"])


@given(st.lists(st.sampled_from(CONV_MODES), min_size=1, max_size=6))
def test_modes_keep_the_first_occurrence_order_and_the_first_is_primary(modes):
    config = AnalysisConfig(conv_mode=modes)
    expected = []
    for mode in modes:
        if mode not in expected:
            expected.append(mode)
    assert config.conv_mode == tuple(expected)
    assert config.primary_mode == modes[0]


@given(st.lists(st.sampled_from((*GROUPS, "all")), min_size=1, max_size=7))
def test_metric_selection_expands_all_and_drops_duplicates(selection):
    groups = AnalysisConfig(metrics=selection).metrics
    if "all" in selection:
        assert groups == GROUPS
    else:
        assert set(groups) == set(selection) and len(groups) == len(set(selection))
        assert list(groups) == sorted(set(selection), key=selection.index)


_NOT_A_NAME = st.text(min_size=0, max_size=8).filter(
    lambda s: s not in (*GROUPS, "all", *CONV_MODES)
)


@given(st.lists(st.sampled_from((*GROUPS, "all")), max_size=4), _NOT_A_NAME, st.data())
def test_any_unknown_group_raises_listing_every_valid_one_even_beside_all(valid, bad, data):
    position = data.draw(st.integers(0, len(valid)))
    selection = [*valid[:position], bad, *valid[position:]]
    with pytest.raises(ValueError) as error:
        AnalysisConfig(metrics=selection)
    assert_lists(error, "metrics", bad, (*GROUPS, "all"))


@given(st.lists(st.sampled_from(CONV_MODES), max_size=3), _NOT_A_NAME, st.data())
def test_any_unknown_mode_raises_listing_every_valid_one(valid, bad, data):
    position = data.draw(st.integers(0, len(valid)))
    with pytest.raises(ValueError) as error:
        AnalysisConfig(conv_mode=[*valid[:position], bad, *valid[position:]])
    assert_lists(error, "conv_mode", bad, CONV_MODES)


def test_the_selection_all_plus_a_typo_raises():
    with pytest.raises(ValueError, match=r"metrics must be among .*'all', got 'typo'"):
        AnalysisConfig(metrics=("all", "typo"))
    with pytest.raises(ValueError, match="metrics must be among"):
        expand_metric_groups(("all", "typo"))


# ---------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("kwargs", "option", "bad", "valid"),
    [
        ({"conv_mode": "fft"}, "conv_mode", "fft", CONV_MODES),
        ({"normalization": "l2"}, "normalization", "l2", NORMALIZATIONS),
        ({"fit": "mle"}, "fit", "mle", FITS),
        ({"metrics": "spikes"}, "metrics", "spikes", (*GROUPS, "all")),
        ({"svd_method": "eig"}, "svd_method", "eig", SVD_METHODS),
        ({"conv_mode": ()}, "conv_mode", "", CONV_MODES),
        ({"metrics": ()}, "metrics", "", (*GROUPS, "all")),
    ],
)
def test_unknown_choices_raise_with_the_valid_list(kwargs, option, bad, valid):
    with pytest.raises(ValueError) as error:
        AnalysisConfig(**kwargs)
    if bad:
        assert_lists(error, option, bad, valid)
    else:
        assert "at least one" in str(error.value) and "empty" in str(error.value)
        assert all(repr(v) in str(error.value) for v in valid)


def test_unknown_epoch_hook_raises_with_the_valid_list():
    with pytest.raises(ValueError) as error:
        MonitorConfig(check_on="epoch_end")
    assert_lists(error, "check_on", "epoch_end", EPOCH_HOOKS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conv_mode": {"unfold"}}, "conv_mode must be a string or a sequence"),
        ({"metrics": None}, "metrics must be a string or a sequence.*None"),
        ({"metrics": 5}, "metrics must be a string or a sequence.*5"),
        ({"conv_mode": None}, "conv_mode must be a string or a sequence.*None"),
        ({"ww_compat": "false"}, "ww_compat must be True or False, got 'false'"),
        ({"include": ["features.*", ""]}, "include.*''"),
        ({"exclude": 3}, "exclude must be a string or a sequence.*3"),
        ({"input_size": (8, 0)}, r"input_size.*\(8, 0\)"),
        ({"input_size": True}, "input_size.*True"),
        ({"input_size": "8"}, "input_size.*'8'"),
        ({"generator_seed": 1.5}, "generator_seed must be an integer, got 1.5"),
        ({"chunk_elems": 0}, "chunk_elems must be an integer >= 1, got 0"),
        ({"chunk_elems": None}, "chunk_elems must be an integer >= 1, got None"),
    ],
)
def test_bad_analysis_values_name_option_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnalysisConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_epochs": -1}, "every_n_epochs must be an integer >= 0 or None, got -1"),
        ({"every_n_steps": 2.5}, "every_n_steps.*2.5"),
        ({"every_n_steps": True}, "every_n_steps.*True"),
        ({"figures_every_n": -2}, "figures_every_n must be an integer >= 0, got -2"),
        ({"figures_every_n": None}, "figures_every_n.*None"),
        ({"figure_layers": True}, "figure_layers.*True"),
        ({"figure_layers": -1}, "figure_layers.*-1"),
        ({"figure_layers": ["fc", ""]}, r"figure_layers.*\['fc', ''\]"),
        ({"log_init": 1}, "log_init must be True or False, got 1"),
        ({"histograms": None}, "histograms must be True or False, got None"),
        ({"stop_on_alert": "yes"}, "stop_on_alert.*'yes'"),
        ({"history_file": ""}, "history_file.*''"),
        ({"history_file": 3}, "history_file.*3"),
        ({"analysis": {"fit": "ks"}}, "analysis must be an AnalysisConfig"),
    ],
)
def test_bad_monitor_values_name_option_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MonitorConfig(**kwargs)


def test_counts_and_names_are_normalised():
    config = MonitorConfig(every_n_epochs=0, every_n_steps=0, figure_layers="fc")
    assert (config.every_n_epochs, config.every_n_steps) == (None, None)
    assert config.figure_layers == ("fc",)
    assert MonitorConfig(figure_layers=["a", "b", "a"]).figure_layers == ("a", "b")
    assert MonitorConfig(figure_layers=0).figure_layers == 0
    assert AnalysisConfig(include="features.*").include == ("features.*",)
    assert AnalysisConfig(input_size=[8, 6]).input_size == (8, 6)
    assert AnalysisConfig(input_size=8).input_size == 8


def test_figure_layer_names_are_checked_against_the_model_listing_both_sides():
    known = ["features.0", "features.3", "classifier"]
    assert check_layer_names("figure_layers", ("classifier",), known) == ("classifier",)
    with pytest.raises(ValueError) as error:
        check_layer_names("figure_layers", ("classifier", "fc", "head"), known)
    text = str(error.value)
    assert "figure_layers" in text and "'fc'" in text and "'head'" in text
    assert all(repr(name) in text for name in known)
    assert "unknown layer(s) 'fc', 'head';" in text  # 'classifier' is not called unknown


# ---------------------------------------------------------------------------- legacy names
@pytest.mark.parametrize(("old", "new"), sorted(LEGACY_NAMES.items()))
def test_every_legacy_name_maps_to_its_new_name_and_warns(old, new):
    value = {"conv_mode": ("operator",), "check_on": "validation_epoch_end",
             "chunk_elems": 1024}[new]
    with pytest.warns(DeprecationWarning, match=f"{old}=.*deprecated; use {new}=") as record:
        options = rename_legacy({old: value, "fit": "hill"}, stacklevel=1)
    assert options == {new: value, "fit": "hill"}
    assert record[0].filename == __file__  # points at the caller's line


@pytest.mark.parametrize(("old", "new"), sorted(LEGACY_NAMES.items()))
def test_a_legacy_name_beside_its_new_name_is_a_type_error(old, new):
    with pytest.raises(TypeError, match=f"both '{new}' and its deprecated name '{old}'"):
        rename_legacy({old: 1, new: 2})


def test_legacy_spellings_build_the_same_monitor_config_as_the_new_ones():
    new = MonitorConfig.from_arguments(
        {"conv_mode": ("unfold", "operator"), "check_on": "validation_epoch_end",
         "chunk_elems": 4096, "metrics": "all"})
    with pytest.warns(DeprecationWarning) as record:
        old = MonitorConfig.from_arguments(
            {"conv_modes": ("unfold", "operator"), "on": "validation_epoch_end",
             "max_batch_elems": 4096, "metrics": "all"}, stacklevel=1)
    assert old == new
    assert new.analysis.conv_mode == ("unfold", "operator")
    assert new.check_on == "validation_epoch_end" and new.analysis.chunk_elems == 4096
    assert len(record) == 3 and {w.filename for w in record} == {__file__}


def test_current_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MonitorConfig.from_arguments({"conv_mode": "slices", "check_on": "train_epoch_end"})
        AnalysisConfig.from_arguments({"conv_mode": "slices", "metrics": ("norms",)})


def test_unknown_arguments_are_a_type_error_listing_the_valid_ones():
    with pytest.raises(TypeError, match="unexpected argument.*conv_modez") as error:
        MonitorConfig.from_arguments({"conv_modez": "unfold"})
    assert "conv_mode" in str(error.value) and "check_on" in str(error.value)


@pytest.mark.parametrize(
    ("legacy", "groups", "fit"),
    [
        ({"metrics": True}, ("norms", "powerlaw"), "ks"),
        ({"metrics": True, "fit": "hill"}, ("norms", "powerlaw"), "hill"),
        ({"metrics": True, "fit": None}, ("norms",), None),
        ({"metrics": True, "mp_fit": True}, ("norms", "powerlaw", "mp"), "ks"),
        ({"metrics": True, "traps": True, "mp_fit": False}, ("norms", "powerlaw", "traps"), "ks"),
        ({"mp_fit": True, "traps": True}, ("norms", "powerlaw", "mp", "traps"), "ks"),
        ({"metrics": False}, ("norms",), None),
        ({"metrics": False, "mp_fit": True, "traps": True, "fit": "ks"}, ("norms",), None),
        ({"metrics": ("norms",), "mp_fit": True}, ("norms", "mp"), None),
    ],
)
def test_analyze_boolean_metrics_and_flags_map_to_groups(legacy, groups, fit):
    with pytest.warns(DeprecationWarning, match="metrics=True/False, mp_fit=.*deprecated"):
        config = AnalysisConfig.from_arguments(legacy)
    assert config.metrics == groups
    assert config.fit == fit
    assert (config.mp_fit, config.traps) == ("mp" in groups, "traps" in groups)


def test_check_on_needs_no_quotes_in_yaml_where_on_did():
    assert yaml.safe_load("on: validation_epoch_end") == {True: "validation_epoch_end"}
    options = yaml.safe_load("check_on: validation_epoch_end\nconv_mode: [unfold, operator]")
    config = MonitorConfig.from_arguments(options)
    assert config.check_on == "validation_epoch_end"
    assert config.analysis.conv_mode == ("unfold", "operator")
    assert re.search("check_on", MonitorConfig.__doc__ or "")


def _analyze_like(**options):
    """Stands for a public function that maps its keyword arguments (as ``analyze`` will)."""
    return AnalysisConfig.from_arguments(options)


def test_the_warning_points_at_the_users_call_not_at_the_package():
    with pytest.warns(DeprecationWarning) as record:
        line = _line_after()
        _analyze_like(conv_modes="slices")
    assert (record[0].filename, record[0].lineno) == (__file__, line)


def _line_after() -> int:
    import inspect

    return inspect.currentframe().f_back.f_lineno + 1  # type: ignore[union-attr]
