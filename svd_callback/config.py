"""One typed, frozen configuration for ``analyze()`` and ``SpectralMonitor``.

The option types are ``Literal`` aliases (:data:`ConvMode`, :data:`Normalization`, :data:`Fit`,
:data:`MetricSelection`, :data:`SvdMethod`, :data:`EpochHook`), so a type checker, an IDE and
LightningCLI see the valid values. :class:`AnalysisConfig` holds what ``analyze()`` and the
callback share (conv modes, metric groups, ESD normalisation, fit, SVD method, layer selection);
:class:`MonitorConfig` adds what only the callback needs (schedule, figures, history file).
Both validate and resolve their values once, in ``__post_init__``:

- ``conv_mode`` becomes a tuple of distinct modes; the first is the primary mode (tags
  ``spectral/<metric>/<layer>``), the others log as ``spectral/<metric>.<mode>/<layer>``;
- ``normalization=None`` becomes ``"raw"``, or ``"ww"`` with ``ww_compat`` (which allows no other);
- ``metrics`` becomes a tuple of distinct groups, ``"all"`` expanded;
- ``fit`` becomes None when ``"powerlaw"`` is not selected, so every record says "no fit";
- ``svd_method="auto"`` becomes ``"gram32"`` under ``ww_compat``.

A value outside its type raises ``ValueError`` naming the option, the value given and the valid
values. Layer names in ``figure_layers`` can only be checked against a model:
:func:`check_layer_names` does it once the layers are known.

The callback builds ``MonitorConfig.from_arguments(its keyword arguments)`` in ``__init__``,
``analyze()`` builds ``AnalysisConfig.from_arguments(its keyword arguments)``; both pass them
first through :func:`rename_legacy`, which maps the names used before this module
(``conv_modes``, ``on``, ``max_batch_elems``, ``analyze``'s boolean ``metrics`` with ``mp_fit``
and ``traps``) to the current ones with a ``DeprecationWarning``. The options are listed in
``docs/configuration.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypedDict, get_args

from svd_callback.aggregates import SUMMARY_STATS
from svd_callback.checks import (
    check_bool,
    check_choice,
    check_count,
    check_figure_layers,
    check_input_size,
    check_int,
    check_patterns,
    check_selection,
    listing,
)
from svd_callback.metric_groups import METRIC_GROUPS, expand_metric_groups
from svd_callback.motion import DEFAULT_SKETCH_SIZE
from svd_callback.spectra import DEFAULT_CHUNK_ELEMS
from svd_callback.spectra.modes import MODES, ModeSpec

__all__ = [
    "CONV_MODES",
    "DEFAULT_CHUNK_ELEMS",
    "DEFAULT_HISTORY_FILE",
    "DEFAULT_METRICS",
    "DEFAULT_SKETCH_SIZE",
    "EPOCH_HOOKS",
    "FITS",
    "LEGACY_NAMES",
    "METRIC_SELECTIONS",
    "NORMALIZATIONS",
    "SVD_METHODS",
    "AnalysisConfig",
    "AnalysisOptions",
    "ConvMode",
    "EpochHook",
    "Fit",
    "MetricGroup",
    "MetricSelection",
    "MonitorConfig",
    "Normalization",
    "SvdMethod",
    "check_layer_names",
    "legacy_options",
    "legacy_value",
    "rename_legacy",
]

ConvMode = Literal["unfold", "operator", "slices"]
"""Conv SVD conventions: ``unfold`` (W reshaped to d x c*kh*kw, Praggastis et al. 2022),
``operator`` (the circular conv operator on the layer's input size, Sedghi et al. 2019),
``slices`` (WeightWatcher's pooled kh*kw slices)."""
Normalization = Literal["raw", "ww", "per_row"]
"""ESD conventions: ``raw`` lambda = sigma^2; ``ww`` WeightWatcher 0.7.7 (lambda = sigma^2 / 2 for
convs); ``per_row`` DeepDataProfiler's lambda = sigma^2 / rows (the weight's rows per analysed
matrix: out_features, out_channels / groups)."""
Fit = Literal["ks", "hill"]
"""Power-law fits: ``ks`` (xmin minimising the Kolmogorov-Smirnov distance, Clauset et al. 2009)
or ``hill`` (Hill estimator with xmin = median eigenvalue, TempBalance)."""
MetricGroup = Literal["norms", "powerlaw", "mp", "traps", "motion"]
"""Metric groups, see :data:`svd_callback.metric_groups.METRIC_GROUPS`."""
MetricSelection = Literal["norms", "powerlaw", "mp", "traps", "motion", "all"]
"""What ``metrics=`` accepts: a group or ``"all"``."""
SvdMethod = Literal["auto", "svd", "gram", "gram32"]
"""Singular-value solvers, see :func:`svd_callback.spectra.batched_svdvals`."""
EpochHook = Literal["train_epoch_end", "validation_epoch_end"]
"""The Lightning hook at which the epoch schedule analyses."""

CONV_MODES: tuple[str, ...] = get_args(ConvMode)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
FITS: tuple[str, ...] = get_args(Fit)
METRIC_SELECTIONS: tuple[str, ...] = get_args(MetricSelection)
SVD_METHODS: tuple[str, ...] = get_args(SvdMethod)
EPOCH_HOOKS: tuple[str, ...] = get_args(EpochHook)

DEFAULT_METRICS: tuple[MetricGroup, ...] = ("norms", "powerlaw", "motion")
DEFAULT_HISTORY_FILE = "spectral_history.jsonl"
"""The history file's default name, relative to the log directory."""

LEGACY_NAMES: dict[str, str] = {
    "conv_modes": "conv_mode",
    "on": "check_on",
    "max_batch_elems": "chunk_elems",
}
"""Argument names used before this configuration -> their current names. ``on`` had to be
quoted in YAML (YAML 1.1 reads a bare ``on`` as true); ``check_on`` does not."""
_LEGACY_ANALYZE_FLAGS = ("mp_fit", "traps")


class AnalysisOptions(TypedDict, total=False):
    """The keyword arguments of ``analyze()`` that build its :class:`AnalysisConfig`, typed for
    type checkers and IDEs (``**options: Unpack[AnalysisOptions]``); the fields' meaning is that
    of :class:`AnalysisConfig`."""

    include: str | Sequence[str] | None
    exclude: str | Sequence[str] | None
    metrics: MetricSelection | Sequence[MetricSelection]
    normalization: Normalization | None
    fit: Fit | None
    ww_compat: bool
    svd_method: SvdMethod
    input_size: int | Sequence[int] | None
    generator_seed: int
    chunk_elems: int
    embeddings: bool


@dataclass(frozen=True)
class AnalysisConfig:
    r"""What ``analyze()`` and the callback compute, validated and resolved.

    Args:
        conv_mode: one conv mode or several (:data:`ConvMode`); the first is the primary mode.
            After construction: a tuple of distinct modes.
        include: glob patterns (``fnmatch``) a qualified layer name must match (None: all).
        exclude: glob patterns of layer names to leave out.
        metrics: metric groups (:data:`MetricSelection`); ``"all"`` selects every group. After
            construction: a tuple of distinct groups.
        normalization: ESD convention (:data:`Normalization`); None: ``"raw"``, or ``"ww"``
            with ``ww_compat``.
        fit: power-law fit (:data:`Fit`) for the ``"powerlaw"`` group; None only when that
            group is not selected. After construction: None when it is not selected.
        ww_compat: reproduce WeightWatcher 0.7.7 (its normalisation, skip rules and fit).
        svd_method: singular-value solver (:data:`SvdMethod`); ``"auto"`` becomes ``"gram32"``
            with ``ww_compat`` and otherwise leaves the choice to the spectra (float64 Gram).
        input_size: spatial size of the model's input (int or one int per dimension), probed
            once for each conv's input size in ``operator`` mode.
        generator_seed: seed of the private generator that shuffles weights for ``"traps"``.
        chunk_elems: at most this many matrix elements per solver call (memory bound).
        embeddings: also analyse ``nn.Embedding`` tables (kind ``embedding``); a table tied to
            an output layer is analysed once, under the first name.

    Raises:
        ValueError: on any invalid value, naming the option, the value and the valid values.

    Note:
        The fields hold resolved values: ``dataclasses.replace(config, ww_compat=False)`` keeps
        the ``"ww"`` normalisation resolved before; build a new config to change ``ww_compat``.
    """

    conv_mode: ConvMode | tuple[ConvMode, ...] = ("unfold",)
    include: str | tuple[str, ...] | None = None
    exclude: str | tuple[str, ...] | None = None
    metrics: MetricSelection | tuple[MetricSelection, ...] = DEFAULT_METRICS
    normalization: Normalization | None = None
    fit: Fit | None = "ks"
    ww_compat: bool = False
    svd_method: SvdMethod = "auto"
    input_size: int | tuple[int, ...] | None = None
    generator_seed: int = 0
    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    embeddings: bool = False

    def __post_init__(self) -> None:
        ww_compat = check_bool("ww_compat", self.ww_compat)
        metrics = expand_metric_groups(self.metrics, "metrics")
        resolved = {
            "conv_mode": _check_modes(self.conv_mode),
            "include": check_patterns("include", self.include),
            "exclude": check_patterns("exclude", self.exclude),
            "metrics": metrics,
            "normalization": _resolve_normalization(self.normalization, ww_compat),
            "fit": _resolve_fit(self.fit, metrics),
            "svd_method": _resolve_svd_method(self.svd_method, ww_compat),
            "input_size": check_input_size(self.input_size),
            "generator_seed": check_int("generator_seed", self.generator_seed),
            "chunk_elems": check_count("chunk_elems", self.chunk_elems, minimum=1,
                                       none_ok=False),
            "embeddings": check_bool("embeddings", self.embeddings),
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_arguments(
        cls,
        options: Mapping[str, Any],
        *,
        stacklevel: int = 2,
        owner: str = "analyze",
        also_valid: Collection[str] = (),
    ) -> AnalysisConfig:
        """Build from ``analyze``'s keyword arguments, legacy names mapped by
        :func:`rename_legacy` (``stacklevel`` as there, counted from this call's caller).

        Raises:
            TypeError: on an argument that is neither an option nor a legacy name; the message
                lists the valid options and ``also_valid`` (the caller's other arguments).
        """
        options = rename_legacy(options, owner=owner, stacklevel=stacklevel + 1)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(
                f"{owner} got unexpected argument(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(names | set(also_valid)))}"
            )
        return cls(**options)

    @property
    def primary_mode(self) -> ConvMode:
        """The first conv mode: its metrics log as ``spectral/<metric>/<layer>``."""
        return self.conv_mode[0]  # type: ignore[index, return-value]

    @property
    def modes(self) -> tuple[ModeSpec, ...]:
        """The conv modes as objects (:class:`~svd_callback.spectra.modes.ModeSpec`), in the
        order of :attr:`conv_mode`."""
        return tuple(MODES[name] for name in self.conv_mode)

    @property
    def needs_input_size(self) -> bool:
        """Whether a mode needs each conv's input size (``operator``)."""
        return any(mode.needs_input_size for mode in self.modes)

    @property
    def mp_fit(self) -> bool:
        """Whether the Marchenko-Pastur bulk is fitted (group ``"mp"``)."""
        return "mp" in self.metrics

    @property
    def traps(self) -> bool:
        """Whether correlation traps are computed (group ``"traps"``)."""
        return "traps" in self.metrics

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every per-layer metric of the selected groups, in group order."""
        return tuple(m for group in self.metrics for m in METRIC_GROUPS[group])


@dataclass(frozen=True)
class MonitorConfig:
    r"""Everything ``SpectralMonitor`` reads from its arguments, except the objects it is given
    (alert rules, the ``on_alert`` callable, the class-analysis options and probe), which it
    checks itself.

    Args:
        analysis: what is computed, shared with ``analyze()``.
        every_n_epochs: analyse every n epochs (None or 0: no epoch schedule; stored as None).
        every_n_steps: also analyse every n optimizer steps (None or 0: never; stored as None).
        check_on: the hook of the epoch schedule (:data:`EpochHook`); None: chosen in
            ``setup()`` from the trainer by :func:`svd_callback.schedule.resolve_check_on`.
        log_init: analyse the initial weights at the start of training.
        histograms: log singular-value histograms (TensorBoard).
        figures_every_n: write figures every n analyses and at the end of training (0: never).
        figure_layers: how many layers get an ESD figure (spread over the model), or their
            names (checked against the model by :func:`check_layer_names`).
        heatmap_decades: colour scale of the spectrum heat maps, log10(sigma / max sigma) from
            ``-heatmap_decades`` to 0, the same for every run so that runs compare; None: fitted
            to the run's own spectra (at most 3 decades).
        stop_on_alert: honour alerts of severity ``"stop"`` by stopping the training.
        history_file: file name (relative to the log directory) or absolute path of the
            JSON-lines history; None: no history file.
        summary_stats: the aggregates over layers logged as ``all_layers/<metric>_<stat>``
            (``"mean"``, ``"median"``); the history file keeps both.
        constant_metrics: also log ``matrix_rank`` and ``rank_loss`` (constant in ordinary
            training; the alert rules and the history file see them regardless).
        motion_sketch: columns k of the random sketch that the ``"motion"`` metric group keeps
            of each weight (:mod:`svd_callback.motion`: 8 k bytes per weight row on the host;
            exact for weights of at most k columns).

    Raises:
        ValueError: on any invalid value, naming the option, the value and the valid values.
    """

    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    every_n_epochs: int | None = 1
    every_n_steps: int | None = None
    check_on: EpochHook | None = None
    log_init: bool = True
    histograms: bool = True
    figures_every_n: int = 10
    figure_layers: int | str | tuple[str, ...] = 3
    heatmap_decades: float | None = 2.0
    stop_on_alert: bool = True
    history_file: str | None = DEFAULT_HISTORY_FILE
    summary_stats: tuple[str, ...] = ("mean",)
    constant_metrics: bool = False
    motion_sketch: int = DEFAULT_SKETCH_SIZE

    def __post_init__(self) -> None:
        if not isinstance(self.analysis, AnalysisConfig):
            raise ValueError(f"analysis must be an AnalysisConfig, got {self.analysis!r}")
        check_choice("check_on", self.check_on, EPOCH_HOOKS, none_ok=True)
        if self.history_file is not None and (
            not isinstance(self.history_file, str) or not self.history_file
        ):
            raise ValueError(
                f"history_file must be a non-empty string or None, got {self.history_file!r}"
            )
        resolved = {
            "every_n_epochs": check_count("every_n_epochs", self.every_n_epochs) or None,
            "every_n_steps": check_count("every_n_steps", self.every_n_steps) or None,
            "log_init": check_bool("log_init", self.log_init),
            "histograms": check_bool("histograms", self.histograms),
            "figures_every_n": check_count("figures_every_n", self.figures_every_n,
                                            none_ok=False),
            "figure_layers": check_figure_layers(self.figure_layers),
            "heatmap_decades": _check_decades(self.heatmap_decades),
            "stop_on_alert": check_bool("stop_on_alert", self.stop_on_alert),
            "summary_stats": _check_summary_stats(self.summary_stats),
            "constant_metrics": check_bool("constant_metrics", self.constant_metrics),
            "motion_sketch": check_count("motion_sketch", self.motion_sketch, minimum=1,
                                         none_ok=False),
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_arguments(cls, options: Mapping[str, Any], *, stacklevel: int = 2) -> MonitorConfig:
        """Build from the callback's flat keyword arguments: legacy names mapped by
        :func:`rename_legacy` (``stacklevel`` as there, counted from this call's caller), the
        analysis options passed to :class:`AnalysisConfig`.

        Raises:
            TypeError: on an argument that is neither an option nor a legacy name.
        """
        options = rename_legacy(options, owner="SpectralMonitor", stacklevel=stacklevel + 1)
        analysis_names = {f.name for f in fields(AnalysisConfig)}
        monitor_names = {f.name for f in fields(cls)} - {"analysis"}
        unknown = sorted(set(options) - analysis_names - monitor_names)
        if unknown:
            raise TypeError(
                f"SpectralMonitor got unexpected argument(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(analysis_names | monitor_names))}"
            )
        analysis = AnalysisConfig(**{k: v for k, v in options.items() if k in analysis_names})
        return cls(analysis, **{k: v for k, v in options.items() if k in monitor_names})


def _check_decades(value: Any) -> float | None:
    """``heatmap_decades`` as a float (a positive finite number) or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"heatmap_decades must be a positive number or None, got {value!r}")
    return float(value)


def _check_summary_stats(value: Any) -> tuple[str, ...]:
    """``summary_stats`` as a tuple of ``"mean"`` / ``"median"`` (a string: one statistic).

    Raises:
        ValueError: on an empty selection or an unknown statistic.
    """
    stats = (value,) if isinstance(value, str) else value
    valid = SUMMARY_STATS
    if (not isinstance(stats, Sequence) or not stats
            or any(s not in valid for s in stats)):
        raise ValueError(f"summary_stats must be a non-empty selection of {valid}, got {value!r}")
    return tuple(dict.fromkeys(stats))


def rename_legacy(
    options: Mapping[str, Any], *, owner: str = "SpectralMonitor", stacklevel: int = 2
) -> dict[str, Any]:
    """Map the argument names used before :class:`AnalysisConfig` to the current ones.

    ``conv_modes`` -> ``conv_mode``, ``on`` -> ``check_on``, ``max_batch_elems`` ->
    ``chunk_elems``; ``analyze``'s boolean ``metrics`` and its ``mp_fit`` / ``traps`` flags ->
    metric groups: ``metrics=True`` selects ``"norms"``, ``"powerlaw"`` unless ``fit=None``
    (default ``fit="ks"``), ``"mp"`` with ``mp_fit`` and ``"traps"`` with ``traps``;
    ``metrics=False`` selects ``"norms"`` alone and no fit, whatever the flags (before, it kept
    three of the norms, spectral_norm, frobenius_norm and stable_rank, and ignored the flags;
    the group adds the other five norms).
    Each legacy use warns with a ``DeprecationWarning`` that names the new spelling;
    ``stacklevel`` counts as in :func:`warnings.warn` from the caller of this function (1: the
    line that calls it; 2, the default: the line that called that function, i.e. the user's call
    of ``analyze`` or ``SpectralMonitor``).

    Raises:
        TypeError: when a legacy name and its current name are both given.
    """
    out = dict(options)
    for old, new in LEGACY_NAMES.items():
        if old not in out:
            continue
        if new in out:
            raise TypeError(f"{owner} got both {new!r} and its deprecated name {old!r}; "
                            f"pass {new!r} only")
        _deprecated(f"{owner}({old}=...) is deprecated; use {new}=...", stacklevel)
        out[new] = out.pop(old)
    flags = {name: out.pop(name) for name in _LEGACY_ANALYZE_FLAGS if name in out}
    if isinstance(out.get("metrics"), bool) or flags:
        out["metrics"], out["fit"] = _legacy_groups(out.get("metrics", True), out.get("fit", "ks"),
                                                    flags)
        _deprecated(
            f"{owner}(metrics=True/False, mp_fit=..., traps=...) is deprecated; pass the metric "
            f"groups: metrics={out['metrics']!r}", stacklevel,
        )
    return out


def legacy_value(
    owner: str, name: str, value: Any, old: str, old_value: Any, defaults: Collection[Any],
    stacklevel: int = 2,
) -> Any:
    """``value`` of option ``name``, or the value given under its deprecated name ``old``
    (``old_value`` not None) with a ``DeprecationWarning`` naming the new spelling
    (``stacklevel`` as in :func:`rename_legacy`).

    Raises:
        TypeError: both names given (``value`` not one of its ``defaults``).
    """
    if old_value is None:
        return value
    if value not in tuple(defaults):
        raise TypeError(f"{owner} got both {name!r} and its deprecated name {old!r}; "
                        f"pass {name!r} only")
    _deprecated(f"{owner}({old}=...) is deprecated; use {name}=...", stacklevel)
    return old_value


def legacy_options(
    owner: str, metrics: Any, fit: Any, chunk_elems: int, legacy: Mapping[str, Any],
    stacklevel: int = 2,
) -> tuple[Any, Any, int]:
    """``(metrics, fit, chunk_elems)`` after the deprecated keyword arguments ``legacy`` of
    :func:`rename_legacy` (``max_batch_elems``, ``analyze``'s boolean ``metrics`` with
    ``mp_fit`` / ``traps``), each with a ``DeprecationWarning``.

    Raises:
        TypeError: a name in ``legacy`` that is none of these (the message lists the valid
            options, as :meth:`MonitorConfig.from_arguments` does), or a legacy name beside its
            current name.
    """
    unknown = sorted(set(legacy) - {"max_batch_elems", *_LEGACY_ANALYZE_FLAGS})
    if unknown:
        names = {f.name for f in fields(AnalysisConfig)} | {f.name for f in fields(MonitorConfig)}
        raise TypeError(f"{owner} got unexpected argument(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(sorted(names - {'analysis'}))}")
    chunk_elems = legacy_value(owner, "chunk_elems", chunk_elems, "max_batch_elems",
                               legacy.get("max_batch_elems"), (DEFAULT_CHUNK_ELEMS,),
                               stacklevel + 1)
    flags = {name: legacy[name] for name in _LEGACY_ANALYZE_FLAGS if name in legacy}
    if isinstance(metrics, bool) or flags:
        metrics, fit = _legacy_groups(metrics, fit, flags)
        _deprecated(f"{owner}(metrics=True/False, mp_fit=..., traps=...) is deprecated; pass the "
                    f"metric groups: metrics={metrics!r}", stacklevel)
    return metrics, fit, chunk_elems


def check_layer_names(option: str, names: Sequence[str], known: Collection[str]) -> tuple[str, ...]:
    """Check layer names given by the user (``figure_layers``) against the model's layers.

    Raises:
        ValueError: naming ``option``, every unknown name and every known one.
    """
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"{option} names unknown layer(s) {', '.join(map(repr, unknown))}; the model's "
            f"layers are {', '.join(map(repr, known)) or 'none'}"
        )
    return tuple(names)


def _legacy_groups(
    metrics: Any, fit: Any, flags: Mapping[str, Any]
) -> tuple[tuple[str, ...], Any]:
    if metrics is False:  # the flags were ignored: no fit, no bulk fit, no traps
        return ("norms",), None
    if metrics is True:
        groups = ["norms"] + (["powerlaw"] if fit is not None else [])
    else:
        groups = list(expand_metric_groups(metrics, "metrics"))
    if flags.get("mp_fit"):
        groups.append("mp")
    if flags.get("traps"):
        groups.append("traps")
    return tuple(dict.fromkeys(groups)), fit


def _deprecated(message: str, stacklevel: int) -> None:
    """Warn, ``stacklevel`` counted from the caller of :func:`rename_legacy`."""
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel + 2)


def _check_modes(conv_mode: Any) -> tuple[str, ...]:
    return check_selection("conv_mode", conv_mode, CONV_MODES, "mode")


def _resolve_normalization(normalization: Any, ww_compat: bool) -> str:
    check_choice("normalization", normalization, NORMALIZATIONS, none_ok=True)
    if ww_compat and normalization not in (None, "ww"):
        raise ValueError(f"ww_compat=True implies normalization='ww' (or None), got "
                         f"{normalization!r}")
    return normalization or ("ww" if ww_compat else "raw")


def _resolve_fit(fit: Any, metrics: tuple[str, ...]) -> str | None:
    check_choice("fit", fit, FITS, none_ok=True)
    if "powerlaw" not in metrics:
        return None
    if fit is None:
        raise ValueError(
            f"fit=None leaves the 'powerlaw' group of metrics={metrics!r} without a fit: pass "
            f"fit as one of {listing(FITS)}, or metrics without 'powerlaw'"
        )
    return fit


def _resolve_svd_method(svd_method: Any, ww_compat: bool) -> str:
    """``"auto"`` -> ``"gram32"`` under ``ww_compat`` (WeightWatcher's metrics are functionals of
    the ESD that a float32 Gram reproduces to ~1e-6 relative); otherwise as given."""
    check_choice("svd_method", svd_method, SVD_METHODS)
    return "gram32" if svd_method == "auto" and ww_compat else svd_method
