"""Where one analysis goes: ``trainer.callback_metrics``, every logger, TensorBoard's extras
(descriptions, histograms, text, custom-scalar layout, figures), the heat-map store and the
history file. Tags and file formats: ``docs/conventions.md``.

Nothing here needs a ``Trainer``: :meth:`Publisher.publish` takes the loggers, the
``callback_metrics`` dict and the current epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from svd_callback.alerts import AlertEngine
from svd_callback.alerts.base import rule_name
from svd_callback.config import MonitorConfig
from svd_callback.monitor import console
from svd_callback.monitor.alert_text import alert_totals, alerts_text, reasons_text
from svd_callback.monitor.class_stage import ClassStage
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.heatmaps import SpectrumStore
from svd_callback.monitor.history_writer import HistoryWriter
from svd_callback.monitor.result import AnalysisResult
from svd_callback.monitor.selection import drop_redundant, mode_independent
from svd_callback.monitor.text import conventions_markdown
from svd_callback.monitor.values import HEALTHY_STEP_TAG, is_model_level, scalars
from svd_callback.report import Report
from svd_callback.sinks import hparams as hp
from svd_callback.sinks import tags
from svd_callback.sinks.class_figures import hypergraph_figure, overlap_matrix_figure
from svd_callback.sinks.figures import esd_figure_for, spectrum_heatmap_grid
from svd_callback.sinks.layout import custom_scalar_layout
from svd_callback.sinks.tensorboard import TensorBoardSink

__all__ = ["Publisher"]


class Publisher:
    """Publishes each :class:`~svd_callback.monitor.result.AnalysisResult`.

    Args:
        config: the callback's configuration.
        classes: the class stage (its conventions and history settings).
        guard: the callback's guard.
        per_layer_callback_metrics: also put per-layer values into ``callback_metrics``.
        engine: the alert engine: its rules are listed in the ``alerts`` text and its alerts so
            far (restored from a checkpoint on resume) start the cumulative alert counts.
    """

    def __init__(
        self,
        config: MonitorConfig,
        classes: ClassStage,
        guard: Guard,
        per_layer_callback_metrics: bool = False,
        engine: AlertEngine | None = None,
    ) -> None:
        self.config = config
        self.classes = classes
        self.guard = guard
        self.per_layer_callback_metrics = per_layer_callback_metrics
        self.engine = engine
        self.history = HistoryWriter(config, guard)
        self.store = SpectrumStore()
        self.check_on: str | None = config.check_on
        self.reset_fit()

    def reset_fit(self) -> None:
        """Forget the writers and what was written in a previous ``fit``."""
        self._sinks: dict[int, TensorBoardSink] = {}
        self._layouts: dict[int, tuple[set[str], set[str], set[str]]] = {}
        self._started_logging = False
        self.last_result: AnalysisResult | None = None
        self._last_figure_index = -1
        self._alert_totals: Counter[str] | None = None

    def start_fit(self, trainer: Any) -> None:
        """At the start of ``fit``: :meth:`reset_fit`, then (rank 0) :meth:`write_hparams` with
        the LightningModule's and DataModule's hyperparameters."""
        self.reset_fit()
        if trainer.is_global_zero:
            datamodule = getattr(trainer, "datamodule", None)
            model = {**getattr(datamodule, "hparams", {}), **trainer.lightning_module.hparams}
            self.guard.call("writing the HPARAMS records", self.write_hparams, trainer.loggers,
                            model)

    def reset_run(self) -> None:
        """Forget the run state (heat maps, history path and run id)."""
        self.store = SpectrumStore()
        self.history.reset()
        self._alert_totals = None

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
    ) -> None:
        """``callback_metrics`` and the heat-map store (every rank); loggers, TensorBoard and
        the history file (rank 0). ``index``: the analysis's 0-based number in this run."""
        values, descriptions = scalars(result, self.config.analysis, self.classes.conventions())
        self._add_alert_totals(result, values, descriptions)
        callback_metrics.update({  # float64 for the step: float32 rounds steps above 2**24
            tag: torch.tensor(value, dtype=torch.float64 if tag == HEALTHY_STEP_TAG else
                              torch.float32) for tag, value in values.items()
            if self.per_layer_callback_metrics or is_model_level(tag) or tag.startswith("alerts/")
        })
        drop_redundant(values, descriptions, result, self.config)  # the loggers get fewer
        self.last_result = result
        if self.config.figures_every_n:
            self.guard.call("storing spectra for the heat maps", self.store.add, result.report,
                            result.epochs_trained, self.config.analysis.primary_mode,
                            self.config.figure_layers)
        if is_zero:
            self.guard.call("logging the analysis", self._log, result, values, descriptions,
                            loggers, current_epoch, index)

    def _add_alert_totals(
        self, result: AnalysisResult, values: dict[str, float], descriptions: dict[str, str]
    ) -> None:
        """``alerts/total`` and ``alerts/rule/<rule>``: alerts raised so far in this run, in all
        and per rule (every active rule, 0 until it fires)."""
        if self._alert_totals is None:
            before: list[Any] = []
            if self.engine is not None:
                before = list(self.engine.alerts_so_far)
                for alert in self.engine.last_alerts:
                    if alert in before:
                        before.remove(alert)
            self._alert_totals = alert_totals(before, result.alerts)
        else:
            self._alert_totals.update(a.rule for a in result.alerts)
        totals = self._alert_totals
        values[tags.ALERT_TOTAL_TAG] = float(sum(totals.values()))
        descriptions[tags.ALERT_TOTAL_TAG] = (
            "cumulative number of spectral alerts raised in this run up to this analysis "
            "(alerts/count: the number raised by each analysis)")
        names = [rule_name(r) for r in self._rules()]
        for name in dict.fromkeys([*names, *sorted(totals)]):
            tag = tags.alert_rule_tag(name)
            values[tag] = float(totals.get(name, 0))
            descriptions[tag] = (f"cumulative number of alerts rule {name} raised in this run "
                                 f"up to this analysis")

    def _rules(self) -> list[Any]:
        return list(self.engine.rules) if self.engine is not None else []

    def _log(
        self,
        result: AnalysisResult,
        values: dict[str, float],
        descriptions: dict[str, str],
        loggers: Sequence[Any],
        current_epoch: int,
        index: int,
    ) -> None:
        step = result.step
        self._warn_skipped(result.report)
        for alert in result.alerts:  # one line each; an "info" alert as information
            console.alert(f"SpectralMonitor alert [{alert.severity}] {alert.message}"
                          f"{result.raised_on(alert)}", alert.severity)
        self.guard.call("writing the history file", self.history.write, result)
        if result.class_report is not None:
            self.guard.call("writing the class history", self.history.write_classes, result,
                            self.classes.history_fields())
        sinks = self.tensorboard_sinks(loggers)
        epoch = {tags.EPOCH_TAG: float(current_epoch)}
        for logger in loggers:
            if id(logger) not in sinks:
                self.guard.call(f"logging to {type(logger).__name__}", _log_to_logger, logger,
                                {**values, **epoch}, step)
        if not loggers:
            self.guard.note_once(
                "no-logger", "the trainer has no logger; the spectral history goes to "
                f"{self.history.path or 'nowhere (history_file=None)'} and "
                "trainer.callback_metrics only")
        for key, sink in sinks.items():
            logger = next(lg for lg in loggers if id(lg) == key)
            self.guard.call("writing TensorBoard scalars", self._write_tensorboard, logger, sink,
                            result, values, descriptions, epoch)
        every = self.config.figures_every_n
        if every and index % every == 0 and sinks:
            self.guard.call("writing figures", self._write_figures, sinks, result)
            self._last_figure_index = index
        for sink in sinks.values():
            self.guard.call("flushing TensorBoard", sink.flush)
        self._started_logging = True

    def finish(self, loggers: Sequence[Any], index: int) -> None:
        """At the end of training: the figures of the last analysis (``index``) unless written
        already, and a flush (rank 0)."""
        sinks = self.tensorboard_sinks(loggers)
        last = self.last_result
        if (self.config.figures_every_n and last is not None and sinks
                and self._last_figure_index != index):
            self.guard.call("writing the final figures", self._write_figures, sinks, last)
            self._last_figure_index = index
        for sink in self._sinks.values():
            self.guard.call("flushing TensorBoard", sink.flush)

    def write_hparams(self, loggers: Sequence[Any], model: Mapping[str, Any]) -> None:
        """The monitor's settings, the model's hyperparameters ``model`` and the names of the
        final summary metrics in TensorBoard's HPARAMS tab (:mod:`svd_callback.sinks.hparams`);
        called at the start of ``fit``, before Lightning logs the model's hyperparameters."""
        merged = {**hp.model_hparams(model), **hp.monitor_hparams(self.config)}
        metrics = hp.metric_tags(self.config)
        for sink in self.tensorboard_sinks(loggers).values():
            if not hp.write_hparams(sink.writer, merged, metrics):
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
        values: dict[str, float],
        descriptions: dict[str, str],
        epoch: dict[str, float],
    ) -> None:
        step = result.step
        if not self._started_logging:
            text = conventions_markdown(self.config, self.check_on, self.history.path,
                                        self.classes.conventions())
            sink.text(tags.CONVENTIONS_TAG, text, step,
                      description="how the spectral metrics of this run were computed")
        self._update_layout(sink, values)
        sink.scalars(values, step, descriptions)
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
        text = alerts_text(result.alerts, result.raised_on, self._alert_totals or {},
                           self._rules(), result.epoch, step)
        sink.text(tags.ALERT_TEXT_TAG, text, step,
                  description="spectral alerts of this analysis, the count so far per rule and "
                  "the active rules (threshold, patience, action)")
        sink.text(tags.REASONS_TAG,
                  reasons_text(result.report, self.config.analysis.metric_names), step,
                  description="why a layer or a logged metric has no value at this analysis")

    def _update_layout(self, sink: TensorBoardSink, values: Mapping[str, float]) -> None:
        """(Re)write the custom-scalar layout when metrics appear that it does not chart yet:
        one chart per metric present, never an empty one."""
        metrics = {t.split("/")[1].split(".")[0] for t in values if t.startswith("spectral/")}
        summary = {t.split("/", 1)[1].split(".")[0] for t in values
                   if t.startswith("spectral_summary/")}
        classes = {t.split("/")[1] for t in values if t.startswith("classes/")}
        known = self._layouts.setdefault(id(sink), (set(), set(), set()))
        if metrics <= known[0] and summary <= known[1] and classes <= known[2]:
            return
        known[0].update(metrics)
        known[1].update(summary)
        known[2].update(classes)
        analysis = self.config.analysis
        charted = [m for m in analysis.metric_names if m in known[0]]
        class_stats = [s for s in tags.CLASS_STAT_DESCRIPTIONS if s in known[2]]
        class_stats += sorted(known[2] - set(class_stats))
        sink.layout(custom_scalar_layout(charted, analysis.conv_mode, sorted(known[1]),
                                         class_stats))

    def _write_figures(self, sinks: Mapping[int, TensorBoardSink], result: AnalysisResult) -> None:
        """ESD figures of the figure layers and one spectrum heat-map grid per mode."""
        analysis = self.config.analysis
        report, step = result.report, result.step
        for mode in analysis.conv_mode:
            for name in self.store.figure_names or []:
                record = report.get(name, mode)
                if record is None or record.svals is None:
                    continue
                how = tags.short_conventions(mode, record.normalization, analysis.fit)
                figure = esd_figure_for(record, how, result.epochs_trained, step)
                for sink in sinks.values():
                    sink.figure(tags.figure_tag("esd", mode, name), figure, step)
            names = [r.name for r in report.by_mode(mode)
                     if self.store.columns(mode, r.name) is not None]
            if not names:
                continue
            stores = [self.store.columns(mode, name) for name in names]
            figure = spectrum_heatmap_grid(
                names,
                [store["epochs"] for store in stores],
                [list(store["quantiles"].numpy()) for store in stores],
                title=f"singular values across training [{mode}] up to epoch "
                f"{result.epochs_trained:g}, step {step}: log10(sigma / layer max) vs epochs "
                f"trained, rows = rank fraction",
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


