"""Where one analysis goes: ``trainer.callback_metrics``, every logger, TensorBoard's extras
(descriptions, histograms, text, custom-scalar layout, figures), the heat-map store and the
history file. Tags and file formats: ``docs/conventions.md``.

Nothing here needs a ``Trainer``: :meth:`Publisher.publish` takes the loggers, the
``callback_metrics`` dict and the current epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from svd_callback.alerts import Alert, AlertEngine
from svd_callback.config import MonitorConfig
from svd_callback.monitor import console
from svd_callback.monitor.alert_text import cleared_conditions, reasons_text, state_text
from svd_callback.monitor.class_stage import ClassStage
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.heatmaps import SpectrumStore
from svd_callback.monitor.history_writer import HistoryWriter
from svd_callback.monitor.result import AnalysisResult
from svd_callback.monitor.scalars import (
    ALERT_CHARTS,
    analysis_scalars,
    hparam_metrics,
    layout_charts,
    layout_sections,
    mode_independent,
)
from svd_callback.monitor.text import conventions_markdown
from svd_callback.monitor.trainer_access import suppress_hp_metric
from svd_callback.report import Report
from svd_callback.schedule import Schedule
from svd_callback.sinks import hparams as hp
from svd_callback.sinks import tags
from svd_callback.sinks.class_figures import hypergraph_figure, overlap_matrix_figure
from svd_callback.sinks.figures import esd_figure_for, spectrum_heatmap_grid
from svd_callback.sinks.layout import custom_scalar_layout
from svd_callback.sinks.tags import Chart, Scalar
from svd_callback.sinks.tensorboard import TensorBoardSink

__all__ = ["Publisher"]


class Publisher:
    """Publishes each :class:`~svd_callback.monitor.result.AnalysisResult`.

    Args:
        config: the callback's configuration.
        classes: the class stage (its conventions and history settings).
        guard: the callback's guard.
        per_layer_callback_metrics: also put per-layer values into ``callback_metrics``.
        engine: the alert engine, whose rules the ``alerts`` text lists.
        schedule: the schedule, whose hook (resolved in ``setup()``) the conventions text names.

    Its run state (the heat-map store and the history file's path and run id) is checkpointed
    through :meth:`state_dict`; :meth:`reset` forgets it for a new run.
    """

    def __init__(
        self,
        config: MonitorConfig,
        classes: ClassStage,
        guard: Guard,
        per_layer_callback_metrics: bool = False,
        engine: AlertEngine | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        self.config = config
        self.classes = classes
        self.guard = guard
        self.per_layer_callback_metrics = per_layer_callback_metrics
        self.engine = engine
        self.schedule = schedule
        self.history_writer = HistoryWriter(config, guard)
        self._store = SpectrumStore()
        self.reset_fit()

    heatmaps = property(lambda self: self._store,
                        doc="The spectra kept for the heat-map figures (a ``SpectrumStore``).")

    def reset_fit(self) -> None:
        """Forget the writers and what was written in a previous ``fit``."""
        self._sinks: dict[int, TensorBoardSink] = {}
        self._layouts: dict[int, set[Chart]] = {}
        self._started_logging = False
        self.last_result: AnalysisResult | None = None
        self._last_figure_index = -1
        self._in_force: tuple[Alert, ...] = ()  # the alerts in force at the last analysis
        self._hparams: tuple[dict, set[str]] | None = None  # written once metrics exist

    def start_fit(self, trainer: Any) -> None:
        """At the start of ``fit``: :meth:`reset_fit`, then (rank 0) keep the hyperparameters
        of the LightningModule and DataModule (and which differ from their constructors'
        defaults) for the HPARAMS record, written once the trainer has logged validation
        metrics (:meth:`write_hparams`), and keep each ``TensorBoardLogger`` from writing its
        own record with the placeholder ``hp_metric`` (:func:`suppress_hp_metric`)."""
        self.reset_fit()
        if trainer.is_global_zero:
            datamodule = getattr(trainer, "datamodule", None)
            module = trainer.lightning_module
            model = hp.model_hparams(getattr(datamodule, "hparams", {}), module.hparams)
            defaults = hp.constructor_defaults(
                None if datamodule is None else type(datamodule), type(module))
            self._hparams = (model, hp.changed_settings(model, defaults))
            for logger in self.tensorboard_loggers(trainer.loggers):
                suppress_hp_metric(logger)

    def reset(self) -> None:
        """Forget the run (heat maps, history path and run id): a new run."""
        self._store = SpectrumStore()
        self.history_writer.reset()

    def state_dict(self) -> dict[str, Any]:
        """The heat-map store and the history file's path and run id."""
        return {"heatmaps": self._store.state_dict(), "history": self.history_writer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self._store.load_state_dict(state["heatmaps"])
        self.history_writer.load_state_dict(state["history"])

    def start_history(self, path: Any, **run: Any) -> None:
        """Open the history file at ``path`` for this fit and write its ``run`` row
        (:meth:`HistoryWriter.start <svd_callback.monitor.history_writer.HistoryWriter.start>`
        with ``run``: resumed, step, epoch, world size, last analysed step)."""
        self.history_writer.start(path, **run)

    # ------------------------------------------------------------------ publish
    def publish(
        self,
        result: AnalysisResult,
        *,
        loggers: Sequence[Any],
        callback_metrics: MutableMapping[str, Any],
        current_epoch: int,
        index: int,
        is_zero: bool = True,
        trainer_metrics: Sequence[str] = (),
    ) -> None:
        """``callback_metrics`` and the heat-map store (every rank); loggers, TensorBoard and
        the history file (rank 0). ``index``: the analysis's 0-based number in this run;
        ``trainer_metrics``: the names of the metrics the trainer logged so far
        (``trainer.logged_metrics``), the model's own metrics of the HPARAMS record."""
        records = analysis_scalars(result, self.config, self.classes.conventions())
        callback_metrics.update({
            s.tag: torch.tensor(s.value, dtype=torch.float64 if s.float64 else torch.float32)
            for s in records if self.per_layer_callback_metrics or s.model_level
        })
        logged = [s for s in records if s.logged]  # the loggers get fewer
        self.last_result = result
        if self.config.figures_every_n:
            self.guard.call("storing spectra for the heat maps", self._store.add, result.report,
                            result.epochs_trained, self.config.analysis.primary_mode,
                            self.config.figure_layers)
        if is_zero:
            self.guard.call("logging the analysis", self._log, result, logged, loggers,
                            current_epoch, index)
            if self._hparams is not None and any(m.startswith("val") for m in trainer_metrics):
                self.guard.call("writing the HPARAMS records", self.write_hparams, loggers,
                                logged, trainer_metrics)

    def _rules(self) -> list[Any]:
        return list(self.engine.rules) if self.engine is not None else []

    def _log(
        self,
        result: AnalysisResult,
        scalars: list[Scalar],
        loggers: Sequence[Any],
        current_epoch: int,
        index: int,
    ) -> None:
        step = result.step
        self._warn_skipped(result.report)
        for alert in result.alerts:  # one line each; an "info" alert as information
            console.alert(f"SpectralMonitor alert [{alert.severity}] {alert.message}"
                          f"{result.raised_on(alert)}", alert.severity)
        self.guard.call("writing the history file", self.history_writer.write, result)
        if result.class_report is not None:
            self.guard.call("writing the class history", self.history_writer.write_classes, result,
                            self.classes.history_fields())
        sinks = self.tensorboard_sinks(loggers)
        epoch = {tags.EPOCH_TAG: float(current_epoch)}
        for logger in loggers:
            if id(logger) not in sinks:
                self.guard.call(f"logging to {type(logger).__name__}", _log_to_logger, logger,
                                {**{s.tag: s.value for s in scalars}, **epoch}, step)
        if not loggers:
            self.guard.note_once(
                "no-logger", "the trainer has no logger; the spectral history goes to "
                f"{self.history_writer.path or 'nowhere (history_file=None)'} and "
                "trainer.callback_metrics only")
        alerts_markdown = state_text(
            result.in_force, result.alerts, cleared_conditions(self._in_force, result.in_force),
            {rule: count for rule, count in result.alert_totals.items() if count},
            result.epoch, step, rules=None if self._started_logging else self._rules(),
            where=result.raised_on)
        self._in_force = tuple(result.in_force)
        for key, sink in sinks.items():
            logger = next(lg for lg in loggers if id(lg) == key)
            self.guard.call("writing TensorBoard scalars", self._write_tensorboard, logger, sink,
                            result, scalars, epoch, alerts_markdown)
        every = self.config.figures_every_n
        if every and index % every == 0 and sinks:
            self.guard.call("writing figures", self._write_figures, sinks, result)
            self._last_figure_index = index
        for sink in sinks.values():
            self.guard.call("flushing TensorBoard", sink.flush)
        self._started_logging = True

    def finish(self, loggers: Sequence[Any], index: int,
               trainer_metrics: Sequence[str] = ()) -> None:
        """At the end of training: the HPARAMS record unless written already (a run without
        validation metrics), the figures of the last analysis (``index``) unless written
        already, and a flush (rank 0)."""
        sinks = self.tensorboard_sinks(loggers)
        last = self.last_result
        if self._hparams is not None and last is not None:
            records = analysis_scalars(last, self.config, self.classes.conventions())
            self.guard.call("writing the HPARAMS records", self.write_hparams, loggers,
                            [s for s in records if s.logged], trainer_metrics)
        if (self.config.figures_every_n and last is not None and sinks
                and self._last_figure_index != index):
            self.guard.call("writing the final figures", self._write_figures, sinks, last)
            self._last_figure_index = index
        for sink in self._sinks.values():
            self.guard.call("flushing TensorBoard", sink.flush)

    def write_hparams(self, loggers: Sequence[Any], scalars: Sequence[Scalar],
                      trainer_metrics: Sequence[str]) -> None:
        """The HPARAMS record of the run (:mod:`svd_callback.sinks.hparams`), once per fit:
        the model's hyperparameters kept by :meth:`start_fit` and the monitor's settings
        (those changed from their defaults first), and as metrics ``alerts/active``, the
        model's logged metrics and the aggregates logged in ``scalars``
        (:func:`~svd_callback.monitor.scalars.hparam_metrics`), all of which exist."""
        if self._hparams is None:
            return
        model, changed = self._hparams
        self._hparams = None
        settings = hp.monitor_hparams(self.config)
        changed |= hp.changed_settings(settings, hp.monitor_hparams(MonitorConfig()))
        metrics = hparam_metrics(scalars, self.config, trainer_metrics)
        records = hp.hparams_summaries({**model, **settings}, metrics, changed)
        for sink in self.tensorboard_sinks(loggers).values():
            if not sink.summaries(records):
                self.guard.warn_once("hparams", f"{type(sink.writer).__name__} cannot write the "
                                     "HPARAMS records; the settings are in the text tab only")

    def purge(self, loggers: Sequence[Any], step: int) -> None:
        """Hide the events the interrupted run wrote after the checkpoint's ``step``
        (TensorBoard's ``purge_step``): the resumed run writes those steps again."""
        for sink in self.tensorboard_sinks(loggers).values():
            if not sink.purge_from(int(step) + 1):
                self.guard.warn(f"{type(sink.writer).__name__} cannot hide the events written "
                                f"after the checkpoint; TensorBoard may show two values at "
                                f"those steps")

    def _warn_skipped(self, report: Report) -> None:
        """A warning per skipped layer (once per fit each); the embedding tables left out by
        ``embeddings=False``, a choice rather than a problem, in one info line per fit."""
        tables: dict[str, None] = {}
        for record in report.skipped():
            if record.reason_code == "embeddings_off":
                tables[record.name] = None
                continue
            self.guard.warn_once(f"skip:{record.name}:{record.mode}:{record.reason}",
                                 f"layer {record.name!r} [{record.mode}] not analysed: "
                                 f"{record.reason}")
        if tables:
            self.guard.note_once("embeddings_off", (
                f"{len(tables)} embedding table(s) not analysed, embeddings are off "
                f"({', '.join(tables)}); embeddings=True analyses them"))

    # ------------------------------------------------------------------ TensorBoard
    @staticmethod
    def tensorboard_loggers(loggers: Sequence[Any]) -> list[TensorBoardLogger]:
        """The ``TensorBoardLogger`` s among ``loggers``."""
        return [logger for logger in loggers if isinstance(logger, TensorBoardLogger)]

    def tensorboard_sinks(self, loggers: Sequence[Any]) -> dict[int, TensorBoardSink]:
        """One sink per ``TensorBoardLogger`` among ``loggers``, by the logger's id."""
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger) and id(logger) not in self._sinks:
                self._sinks[id(logger)] = TensorBoardSink(logger.experiment)
        return {k: v for k, v in self._sinks.items() if any(id(lg) == k for lg in loggers)}

    def _write_tensorboard(
        self,
        logger: TensorBoardLogger,
        sink: TensorBoardSink,
        result: AnalysisResult,
        scalars: list[Scalar],
        epoch: dict[str, float],
        alerts_markdown: str,
    ) -> None:
        step = result.step
        if not self._started_logging:
            check_on = self.config.check_on if self.schedule is None else self.schedule.check_on
            text = conventions_markdown(self.config, check_on, self.history_writer.path,
                                        self.classes.conventions())
            sink.text(tags.CONVENTIONS_TAG, text, step,
                      description="how the spectral metrics of this run were computed")
        self._update_layout(sink, scalars)
        sink.scalars({s.tag: s.value for s in scalars}, step,
                     {s.tag: s.description for s in scalars})
        logger.log_metrics(epoch, step)
        if self.config.histograms:
            for record in result.report:
                if record.svals is None or (record.mode != self.config.analysis.primary_mode
                                            and mode_independent(record.kind)):
                    continue  # a linear layer's spectrum is the same in every conv mode
                sink.histogram(
                    tags.spectrum_tag(record.mode, record.name), log10_sigma(record.svals), step,
                    description=tags.spectrum_description(record.mode, record.normalization),
                )
        sink.text(tags.ALERT_TEXT_TAG, alerts_markdown, step,
                  description="the state first: healthy, or the alert rules in force (since "
                  "when, where, the numbers against their limits, what it usually means and "
                  "what to try); then what this analysis raised and cleared, the count so far, "
                  "and at the first analysis the rules")
        sink.text(tags.REASONS_TAG,
                  reasons_text(result.report, self.config.analysis.metric_names), step,
                  description="why a layer or a logged metric has no value at this analysis")

    def _update_layout(self, sink: TensorBoardSink, scalars: list[Scalar]) -> None:
        """(Re)write the custom-scalar layout when scalars appear that it does not chart yet
        (:func:`~svd_callback.monitor.scalars.layout_charts`), never an empty chart; the
        ``alerts`` charts are there from the first layout on."""
        charts = layout_charts(scalars, self.config)
        known = self._layouts.setdefault(id(sink), set(ALERT_CHARTS))  # shown from the start
        if charts <= known:
            return
        known.update(charts)
        sink.layout(custom_scalar_layout(known, layout_sections(self.config)))

    def _write_figures(self, sinks: Mapping[int, TensorBoardSink], result: AnalysisResult) -> None:
        """ESD figures of the figure layers and one spectrum heat-map grid per mode."""
        analysis = self.config.analysis
        report, step = result.report, result.step
        for mode in analysis.conv_mode:
            for name in self._store.figure_names or []:
                record = report.get(name, mode)
                if record is None or record.svals is None:
                    continue
                how = tags.short_conventions(mode, record.normalization, analysis.fit)
                figure = esd_figure_for(record, how, result.epochs_trained, step)
                for sink in sinks.values():
                    sink.figure(tags.figure_tag("esd", mode, name), figure, step)
            names = [r.name for r in report.by_mode(mode)
                     if self._store.columns(mode, r.name) is not None]
            if not names:
                continue
            stores = [self._store.columns(mode, name) for name in names]
            figure = spectrum_heatmap_grid(
                names,
                [store["epochs"] for store in stores],
                [list(store["quantiles"].numpy()) for store in stores],
                title=f"singular values across training [{mode}], epoch "
                f"{result.epochs_trained:g} (step {step})",
                decades=self.config.heatmap_decades,
            )
            for sink in sinks.values():
                sink.figure(tags.figure_tag("heatmap", mode), figure, step)
        if result.class_report is not None:
            _write_class_figures(sinks.values(), result)


def _write_class_figures(sinks: Any, result: AnalysisResult) -> None:
    """The hypergraph and class-overlap matrix of the last analysed layer."""
    report, step = result.class_report, result.step
    layers = list(report.n_nodes)
    if not layers:
        return
    layer = layers[-1]
    hypergraph = hypergraph_figure(
        report.edges[layer], report.n_nodes[layer], report.num_classes,
        title=f"class hypergraph {layer} (epoch {result.epochs_trained:g}, step {step})",
    )
    overlap = overlap_matrix_figure(
        report.jaccard[layer].numpy(),
        title=f"class overlap (Jaccard of hyperedges) {layer} "
        f"(epoch {result.epochs_trained:g}, step {step})",
    )
    for sink in sinks:
        sink.figure(tags.class_figure_tag("hypergraph", layer), hypergraph, step)
        sink.figure(tags.class_figure_tag("overlap", layer), overlap, step)


def log10_sigma(svals: torch.Tensor) -> np.ndarray:
    """``log10(sigma)`` of the positive singular values: a heavy tail no longer squashes the
    bulk of the histogram into its first bucket."""
    values = svals.detach().cpu().double().numpy().ravel()
    return np.log10(values[values > 0])


def _log_to_logger(logger: Any, metrics: dict[str, float], step: int) -> None:
    logger.log_metrics(metrics, step)
    logger.save()


