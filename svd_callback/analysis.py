"""``analyze``: one pass over a model, one ``LayerReport`` per layer and conv mode.

Layers whose spectra are computed the same way (same kind, weight shape and geometry) are
stacked and decomposed in one batched call on the model's device. Every failure is recorded as a
reason on the layer it concerns; ``analyze`` itself does not raise for bad layers.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from typing_extensions import Unpack  # typing.Unpack needs Python 3.11

from svd_callback.aggregates import (
    FRACTION_LABELS,
    N_LAYERS,
    N_SKIPPED,
    SUMMARY_METRICS,
    SUMMARY_STATS,
    fraction_of,
    statistic,
)
from svd_callback.classes.analysis import analyze_classes
from svd_callback.classes.config import ClassAnalysisConfig
from svd_callback.classes.probe import ProbeSet
from svd_callback.config import AnalysisConfig, AnalysisOptions, ConvMode
from svd_callback.layers import (
    LayerSpec,
    SkippedModule,
    example_input_for,
    find_layers,
    record_input_sizes,
)
from svd_callback.motion import MotionTracker, sketch_rows
from svd_callback.normalizers import output_normalizers
from svd_callback.report import LayerReport, Report, eig_scale
from svd_callback.rmt import QualityThresholds, esd_metrics, trap_matrix, trap_metrics
from svd_callback.sharding import full_weight, sketch_row_block
from svd_callback.spectra import GRAM32_NOISE
from svd_callback.spectra.modes import ModeSpec, kernel_volume
from svd_callback.transfer import to_host

__all__ = ["CALL_ARGUMENTS", "add_motion", "analyze", "summarize"]

CALL_ARGUMENTS = ("config", "input_sizes", "example_input", "layer_names", "thresholds",
                  "keep_svals", "progress", "probe", "class_options", "motion")
"""``analyze``'s per-call arguments, which are not :class:`AnalysisConfig` options."""

WW_MIN_EVALS, WW_MAX_EVALS, WW_MAX_N = 8, 15000, 50000
"""WeightWatcher 0.7.7's layer skip rules (``layer_supported``): M * kh * kw outside [8, 15000]
or N > 50000."""


_STATISTICS = {"mean": statistics.fmean, "median": statistics.median}
"""How each of :data:`~svd_callback.aggregates.SUMMARY_STATS` is computed."""

META_REASON = ("weight is on the meta device (shapes only, no values): materialise it first, "
               "e.g. model.to_empty(device='cpu') then load_state_dict")

GRAM32_NOTE = (f"float32 Gram eigenvalues (svd_method='gram32'): absolute error up to "
               f"{GRAM32_NOISE} eps32 lambda_max; singular values below ~3e-3 sigma_max are not "
               "resolved, so matrix_rank / rank_loss see only structural (all-zero row or "
               "column) rank loss; svd_method='gram' resolves them")


def analyze(
    model: nn.Module,
    conv_mode: ConvMode | Sequence[ConvMode] | None = None,
    *,
    config: AnalysisConfig | None = None,
    input_sizes: dict[str, tuple[int, ...]] | None = None,
    example_input: object = None,
    layer_names: Collection[str] | None = None,
    thresholds: QualityThresholds | None = None,
    keep_svals: bool = True,
    progress: Callable[[int, int], None] | None = None,
    probe: ProbeSet | None = None,
    class_options: ClassAnalysisConfig | None = None,
    motion: MotionTracker | None = None,
    **options: Unpack[AnalysisOptions],
) -> Report:
    """Decompose every conv and linear layer of ``model`` and compute its ESD metrics.

    What is computed is an :class:`~svd_callback.config.AnalysisConfig`: pass one as
    ``config=``, or its options as keyword arguments (``conv_mode``, ``include``, ``exclude``,
    ``metrics``, ``normalization``, ``fit``, ``ww_compat``, ``svd_method``, ``input_size``,
    ``generator_seed``, ``chunk_elems``, ``embeddings``; docs/configuration.md), not both. The
    callback ``SpectralMonitor`` takes the same options under the same names. The names used
    before (``metrics=True/False``, ``mp_fit=``, ``traps=``, and ``fit=None`` without
    ``metrics=`` for "no power-law fit", now ``metrics=("norms",)``) still work with a
    ``DeprecationWarning`` (:func:`svd_callback.config.rename_legacy`).

    Args:
        model: any ``nn.Module``; read, never modified (no mode switch except the one
            probe pass of :func:`~svd_callback.layers.record_input_sizes`, which restores it).
        conv_mode: ``"unfold"`` (Praggastis et al. 2022), ``"operator"`` (Sedghi et al. 2019,
            circular padding) or ``"slices"`` (WeightWatcher), or several of them (None:
            ``"unfold"``, or the mode(s) of ``config``).
        config: the options, validated and resolved (instead of keyword options).
        input_sizes: per-layer spatial input sizes, overriding the probe of ``input_size``.
        example_input: a batch to probe input sizes with (instead of ``input_size``).
        layer_names: analyse only these layers (the distributed work split).
        thresholds: alpha thresholds of the quality label.
        keep_svals: keep each layer's singular values in its record.
        progress: called as ``progress(done, total)`` as (layer, mode) pairs complete.
        probe: a fixed, labelled probe set: also run the class-level analysis
            (:func:`~svd_callback.classes.analysis.analyze_classes`: class-overlap hypergraphs
            of the top-k SVD-neurons of every selected layer, class-specific penultimate
            features; one forward pass in eval mode, each module's mode restored).
        class_options: options of that analysis (None: its defaults; factorization rank only
            with ``factorization_every_n > 0``).
        motion: the :class:`~svd_callback.motion.MotionTracker` of a series of calls on the
            same model: with the ``"motion"`` group selected, each record gets how far its
            weight moved since the tracker's previous and first call (NaN with a note on the
            first). Without a tracker the group adds nothing (it needs earlier weights).
        **options: the :class:`~svd_callback.config.AnalysisConfig` options.

    Returns:
        A :class:`~svd_callback.report.Report`: one record per (layer, mode), skipped modules
        included, and in its field ``classes`` the
        :class:`~svd_callback.classes.report.ClassReport` when ``probe`` is given (None
        otherwise).

    Raises:
        TypeError: an argument that is no option (the message lists the valid ones), a legacy
            name beside its new name, or ``config=`` beside options.
        ValueError: an invalid option value (the message lists the valid values).
    """
    if config is None:
        if conv_mode is not None:
            options["conv_mode"] = conv_mode  # type: ignore[typeddict-unknown-key]
        if "fit" in options and options["fit"] is None and "metrics" not in options:
            warnings.warn("analyze(fit=None) without metrics= is deprecated; pass "
                          "metrics=('norms',) for no power-law fit", DeprecationWarning,
                          stacklevel=2)
            options["metrics"] = ("norms",)  # the legacy "no fit"
        config = AnalysisConfig.from_arguments(options, also_valid=CALL_ARGUMENTS)
    elif conv_mode is not None or options:
        given = ["conv_mode"] * (conv_mode is not None) + sorted(options)
        raise TypeError(f"analyze got config= and the option(s) {', '.join(given)}: pass the "
                        f"options in the config only")
    elif not isinstance(config, AnalysisConfig):
        raise TypeError(f"config must be an AnalysisConfig, got {type(config).__name__}")
    report = _analyze(model, config, input_sizes, example_input, layer_names,
                      thresholds or QualityThresholds(), keep_svals, progress, probe,
                      class_options)
    if motion is not None and "motion" in config.metrics:
        specs, _ = find_layers(model, config.include, config.exclude, config.embeddings)
        add_motion(report, specs, motion)
    return report


def _analyze(
    model: nn.Module,
    config: AnalysisConfig,
    input_sizes: dict[str, tuple[int, ...]] | None,
    example_input: object,
    layer_names: Collection[str] | None,
    thresholds: QualityThresholds,
    keep_svals: bool,
    progress: Callable[[int, int], None] | None,
    probe: ProbeSet | None,
    class_options: ClassAnalysisConfig | None,
) -> Report:
    modes = config.modes
    normalization = config.normalization
    specs, skipped_modules = find_layers(model, include=config.include, exclude=config.exclude,
                                         embeddings=config.embeddings)
    if layer_names is not None:
        wanted = set(layer_names)
        specs = [s for s in specs if s.name in wanted]
        skipped_modules = [s for s in skipped_modules if s.name in wanted]
    if any(s.is_meta for s in specs):  # no data to decompose
        skipped_modules = [*skipped_modules, *(SkippedModule(s.name, s.kind, META_REASON,
                                                              "meta_weight")
                                               for s in specs if s.is_meta)]
        specs = [s for s in specs if not s.is_meta]

    classes = None
    if probe is not None:  # the class statistics of the same selection of layers
        classes = analyze_classes(model, probe, class_options,
                                  layers=[s.name for s in specs if s.is_module_weight])
    report = Report(classes=classes)
    for module in skipped_modules:
        for mode in modes:
            report.append(
                LayerReport(module.name, module.kind, mode.name, normalization,
                            reason=module.reason, reason_code=module.code)
            )
    if not specs:
        return report

    probe_error = None
    if config.needs_input_size:
        probe_error = _attach_input_sizes(model, specs, config.input_size, input_sizes,
                                          example_input)

    bad = _nonfinite_reasons(specs)
    context = _Context(config, thresholds, keep_svals)
    linear_done: dict[str, LayerReport] = {}
    normalizers = output_normalizers(model)
    total, done = len(specs) * len(modes), 0
    for mode in modes:
        records: dict[str, LayerReport] = {}
        todo: list[LayerSpec] = []
        for spec in specs:
            if spec.name in bad:
                records[spec.name] = _record(spec, mode, context, reason=bad[spec.name],
                                             reason_code="nonfinite_weight")
            elif not spec.is_conv and spec.name in linear_done:
                records[spec.name] = _relabel(linear_done[spec.name], mode.name)
            elif skip := _skip_reason(spec, mode.reading(spec.is_conv), config.ww_compat,
                                      probe_error):
                records[spec.name] = _record(spec, mode, context, reason=skip[1],
                                             reason_code=skip[0])
            else:
                todo.append(spec)
        done += len(specs) - len(todo)
        spectra = []
        for item in _spectra(todo, mode, context):  # the device work of every layer, queued
            spectra.append(item)
            done += 1
            if progress is not None:
                progress(done, total)
        host = to_host([t for _, svals, shuffled, _ in spectra for t in (svals, shuffled)])
        for i, (spec, svals, _, reason) in enumerate(spectra):
            records[spec.name] = _record(spec, mode, context, svals, host[2 * i + 1], reason,
                                         None if reason is None else "svd_failed",
                                         host_svals=host[2 * i])
            if not spec.is_conv:
                linear_done[spec.name] = records[spec.name]
        for spec in specs:
            records[spec.name].normalized_by = normalizers.get(spec.name)
        report.extend(records[spec.name] for spec in specs)
    return report


def add_motion(report: Report, specs: Sequence[LayerSpec], tracker: MotionTracker) -> None:
    """Add the ``"motion"`` metrics (:mod:`svd_callback.motion`) of every layer of ``specs``
    analysed in ``report`` to its records, in every mode (with a note for each NaN); the
    tracker keeps the sketches for the next call. A weight sharded by rows (FSDP2) is sketched
    where its rows live and only the sketches are all-gathered
    (:func:`~svd_callback.sharding.sketch_row_block`, a collective, one layer at a time in the
    order of ``specs``); another sharded weight is gathered whole
    (:func:`~svd_callback.sharding.full_weight`)."""
    analysed = {r.name for r in report if not r.skipped}

    def sketches() -> Iterator[tuple[str, tuple[int, ...], torch.Tensor]]:
        for spec in specs:
            if spec.is_meta or spec.name not in analysed:
                continue
            columns = math.prod(spec.weight_shape[1:])

            def sketch(rows: torch.Tensor, name: str = spec.name,
                       columns: int = columns) -> torch.Tensor:
                return sketch_rows(rows, tracker.omega(name, columns, rows.device))

            stored = spec.matrix.stored(spec.module).detach()
            sketched = None if spec.matrix.transpose else sketch_row_block(
                stored, spec.matrix.rows, sketch)
            if sketched is None:
                sketched = sketch(full_weight(spec.weight.detach()))
            yield spec.name, spec.weight_shape, sketched.cpu()

    motion = tracker.update_sketches(sketches())
    for record in report:
        if not record.skipped and record.name in motion:
            values, notes = motion[record.name]
            record.metrics.update(values)
            record.notes.update(notes)


def summarize(report: Report) -> dict[str, dict[str, float]]:
    """Model-level aggregates per mode: ``<metric>_mean`` and ``<metric>_median`` over the
    analysed layers with a finite value, plus ``n_layers``, ``n_skipped`` and the fraction of
    layers per quality label (``frac_over_trained``, ``frac_under_trained``)."""
    out: dict[str, dict[str, float]] = {}
    for mode in dict.fromkeys(r.mode for r in report):
        records = report.by_mode(mode)
        analysed = records.analysed()
        agg: dict[str, float] = {
            N_LAYERS.key: float(len(analysed)),
            N_SKIPPED.key: float(len(records) - len(analysed)),
        }
        for metric in SUMMARY_METRICS:
            values = [v for r in analysed if math.isfinite(v := r.metrics.get(metric, math.nan))]
            if values:
                for stat in SUMMARY_STATS:
                    agg[statistic(metric, stat).key] = float(_STATISTICS[stat](values))
        labelled = [r.quality for r in analysed if r.quality]
        if labelled:
            for label in FRACTION_LABELS:
                agg[fraction_of(label).key] = labelled.count(label) / len(labelled)
        out[mode] = agg
    return out


@dataclass(frozen=True)
class _Context:
    """The resolved options of one call."""

    config: AnalysisConfig
    thresholds: QualityThresholds
    keep_svals: bool


def _attach_input_sizes(
    model: nn.Module,
    specs: list[LayerSpec],
    input_size: int | Sequence[int] | None,
    input_sizes: dict[str, tuple[int, ...]] | None,
    example_input: object,
) -> str | None:
    """Fill ``spec.input_size`` for convs: explicit per-layer sizes, else one probe pass.

    Returns the probe pass's error message when the model rejected the probe input.
    """
    given = dict(input_sizes or {})
    error_message = None
    missing = [s for s in specs if s.is_conv and s.name not in given]
    if missing and (example_input is not None or input_size is not None):
        try:
            probe = (example_input if example_input is not None
                     else example_input_for(model, input_size))
            recorded = record_input_sizes(model, probe, specs)
            given = {**recorded, **given}
        except Exception as error:  # a model whose forward rejects the probe
            error_message = f"probe forward pass failed: {type(error).__name__}: {error}"
    for spec in specs:
        if spec.is_conv and spec.name in given:
            spec.input_size = tuple(given[spec.name])
    return error_message


def _nonfinite_reasons(specs: list[LayerSpec]) -> dict[str, str]:
    """Layers with NaN/Inf weights, found with one host synchronisation.

    NaN and Inf propagate through a sum, so a finite sum proves a weight finite; only a layer
    whose sum is not finite (bad entries, or a sum overflowing) pays the exact check.
    """
    if not specs:
        return {}
    partial = [s.weight.detach().sum().float() for s in specs]  # on each weight's device
    sums = torch.stack([p.to(partial[0].device) for p in partial]).cpu()  # the one transfer
    reasons = {}
    for spec, finite_sum in zip(specs, torch.isfinite(sums).tolist(), strict=True):
        if not finite_sum and not bool(torch.isfinite(spec.weight.detach()).all()):
            w = spec.weight.detach()
            n_nan, n_inf = int(torch.isnan(w).sum()), int(torch.isinf(w).sum())
            reasons[spec.name] = f"weight has non-finite entries ({n_nan} NaN, {n_inf} Inf)"
    return reasons


def _skip_reason(
    spec: LayerSpec, how: ModeSpec, ww_compat: bool, probe_error: str | None = None
) -> tuple[str, str] | None:
    """(reason code, reason) of a layer that ``how`` (its mode's reading) cannot analyse, an
    empty matrix, or one outside WeightWatcher's size limits under ``ww_compat``; else None."""
    if skip := how.skip(spec, probe_error):
        return skip
    n_rows, n_cols = how.matrix_shape(spec)
    if min(n_rows, n_cols) == 0:
        return "empty_weight", "empty weight"
    if ww_compat:
        n_evals = n_cols * kernel_volume(spec)
        if n_evals < WW_MIN_EVALS or n_evals > WW_MAX_EVALS or n_rows > WW_MAX_N:
            return "ww_size_limit", (
                f"skipped as WeightWatcher 0.7.7 does: {n_evals} eigenvalues outside "
                f"[{WW_MIN_EVALS}, {WW_MAX_EVALS}] or N = {n_rows} > {WW_MAX_N}")
    return None


def _group_key(spec: LayerSpec, how: ModeSpec) -> tuple:
    weight = spec.weight
    return (spec.kind if spec.is_conv else "linear", spec.weight_shape, how.batch_key(spec),
            weight.device, weight.dtype)


def _spectra(specs: list[LayerSpec], mode: ModeSpec, ctx: _Context):
    """Yield (spec, svals, shuffled_svals, reason) with one batched call per group of layers."""
    groups: dict[tuple, list[LayerSpec]] = {}
    for spec in specs:
        groups.setdefault(_group_key(spec, mode.reading(spec.is_conv)), []).append(spec)
    for members in groups.values():
        first = members[0]
        fn = mode.reading(first.is_conv).spectrum(first, ctx.config.svd_method,
                                                  ctx.config.chunk_elems)
        try:
            yield from _decompose(members, fn, ctx)
        except Exception:  # isolate the layer that fails
            for spec in members:
                try:
                    yield from _decompose([spec], fn, ctx)
                except Exception as error:
                    yield spec, None, None, f"SVD failed: {type(error).__name__}: {error}"


def _decompose(members: list[LayerSpec], fn, ctx: _Context):
    with torch.no_grad():
        # one layer: a view, not a copy (the solvers never write to their input)
        weights = (members[0].weight.detach().unsqueeze(0) if len(members) == 1 else
                   torch.stack([s.weight.detach() for s in members])).to(torch.float32)
        svals = fn(weights)
        shuffled = None
        if ctx.config.traps:
            generator = torch.Generator(device=weights.device).manual_seed(
                ctx.config.generator_seed)
            shuffled = fn(torch.stack([trap_matrix(w, generator, ww_compat=ctx.config.ww_compat)
                                        for w in weights]))
    for i, spec in enumerate(members):
        yield spec, svals[i], None if shuffled is None else shuffled[i], None


def _record(
    spec: LayerSpec,
    mode: ModeSpec,
    ctx: _Context,
    svals: torch.Tensor | None = None,
    shuffled: torch.Tensor | None = None,
    reason: str | None = None,
    reason_code: str | None = None,
    host_svals: torch.Tensor | None = None,
) -> LayerReport:
    """The record of one layer in one mode; its metrics are computed from ``host_svals`` (the
    CPU copy of ``svals`` made by :func:`svd_callback.transfer.to_host`; default ``svals``) and
    ``shuffled`` (on the CPU), so no per-layer host synchronisation is needed; ``record.svals``
    stays on its device."""
    how = mode.reading(spec.is_conv)
    matrix_shape = how.matrix_shape(spec)
    record = LayerReport(
        name=spec.name,
        kind=spec.kind,
        mode=mode.name,
        normalization=ctx.config.normalization,
        shape=spec.weight_shape,
        matrix_shape=matrix_shape,
        rows=how.weight_rows(spec),
        input_size=how.input_size(spec),
        reason=reason,
        reason_code=reason_code,
    )
    if not spec.is_module_weight and spec.kind != "embedding":
        record.notes["matrix"] = (f"{type(spec.module).__name__} {spec.module_name}."
                                  f"{spec.matrix.describe()} as an (out, in) matrix")
    if reason is not None or svals is None:
        return record
    record.svals = svals if ctx.keep_svals else None
    config = ctx.config
    if config.svd_method == "gram32":
        record.notes["svals"] = GRAM32_NOTE
    scale = eig_scale(spec.kind, config.normalization, record.rows)
    eigs = (svals if host_svals is None else host_svals).double() ** 2 * scale
    n_rows, n_cols = matrix_shape
    result = esd_metrics(
        eigs,
        N=n_rows,
        M=n_cols,
        ww_compat=config.ww_compat,
        fit=config.fit,
        mp_fit=config.mp_fit,
        thresholds=ctx.thresholds,
    )
    record.metrics = dict(result.values)
    record.quality = result.quality if config.fit is not None else None
    record.notes.update(result.notes)
    if shuffled is not None:
        record.metrics.update(trap_metrics(eigs, shuffled.double() ** 2 * scale, n_rows, n_cols))
    return record


def _relabel(record: LayerReport, mode: str) -> LayerReport:
    """A linear layer's record under another conv mode: its spectrum does not depend on it."""
    return replace(record, mode=mode, metrics=dict(record.metrics), notes=dict(record.notes))
