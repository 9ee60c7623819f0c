"""``SpectralMonitor``: the Lightning callback that follows the spectra of every layer in training.

Hooks, checkpointed state and the stop vote; the work is done by its parts
(:mod:`svd_callback.monitor`, :class:`~svd_callback.schedule.Schedule`). The path of one
analysis: ``docs/architecture.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from svd_callback import config as cfg
from svd_callback.alerts import Alert, AlertEngine, Rule, monitor_default_rules
from svd_callback.checks import check_callable
from svd_callback.classes.config import ClassAnalysisConfig
from svd_callback.classes.probe import ProbeSet
from svd_callback.layers import find_layers
from svd_callback.monitor.checkpoint import STATE_VERSION, upgrade
from svd_callback.monitor.class_stage import ClassStage
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.history_writer import distinct_path, trainer_path
from svd_callback.monitor.inputs import first_training_input
from svd_callback.monitor.publisher import Publisher
from svd_callback.monitor.runner import AnalysisRunner, training_scalars
from svd_callback.monitor.trainer_access import epochs_trained_at, validation_settings
from svd_callback.schedule import FIT_START, TRAIN_STEP, Schedule
from svd_callback.sharding import refusal

__all__ = ["SpectralMonitor"]

_UNSET_MODE = (("unfold",), ["unfold"], "unfold")
"""Values of ``conv_mode`` that count as not given beside its legacy name ``conv_modes``."""


class SpectralMonitor(Callback):
    r"""Analyse the singular spectra of every conv and linear layer during training.

    The first analysis runs at the start of training on the initial weights (step 0, epoch 0;
    not repeated when a run resumes). Then the model is analysed every ``every_n_epochs`` epochs
    at ``check_on`` and/or every ``every_n_steps`` optimizer steps; the sanity check is never
    analysed, one global step never twice. On resume the TensorBoard events written after the
    checkpoint's step are purged and the history file is cut back to that step.

    The analysis never changes the model (a seeded run ends with the same weights, bit for bit);
    any exception in it becomes a warning and training goes on. Model-level values (summaries,
    ``alerts/active``, ``alerts/raised``, ``alerts/healthy_step``) go into ``callback_metrics``
    for ``EarlyStopping``/``ModelCheckpoint``, per-layer values to the loggers and history file.
    ``stop`` alerts end the training, agreed by all ranks; under DDP each rank analyses a share
    of the layers and the results are gathered.

    Args:
        every_n_epochs, every_n_steps, check_on, log_init, histograms, figures_every_n,
        figure_layers, heatmap_decades, stop_on_alert, history_file, summary_stats,
        constant_metrics, motion_sketch: the fields of :class:`~svd_callback.config.MonitorConfig`
            (``docs/configuration.md``). ``check_on=None`` is chosen in ``setup()`` as
            ``EarlyStopping`` chooses its hook (:func:`~svd_callback.schedule.resolve_check_on`);
            ``figure_layers`` names are checked against the model in ``setup()``.
        conv_mode, include, exclude, embeddings, metrics, normalization, fit, ww_compat,
        svd_method, input_size, generator_seed, chunk_elems: the fields of
            :class:`~svd_callback.config.AnalysisConfig`, shared with ``analyze()``.
        alert_rules: the alert rules (None: ``default_rules()``, with the traps rule when
            ``"traps"`` is computed, plus the class rules with ``class_analysis``; ``[]``: none).
        on_alert: called as ``on_alert(alert, trainer, pl_module)`` on every rank for each alert
            raised on any rank.
        class_analysis: the class-level analysis at every analysis: ``True``, a
            :class:`~svd_callback.classes.analysis.ClassAnalysisConfig` or a mapping of its
            options; its probe is drawn once from the validation data (``docs/methods.md``).
        class_probe: a fixed :class:`~svd_callback.classes.probe.ProbeSet` (turns it on).
        per_layer_callback_metrics: also put per-layer values into ``callback_metrics``.
        forward_fn: ``forward_fn(model, inputs)`` for the callback's own forward passes (the
            operator input-size probe, the class probe); None: ``model(inputs)``.
        conv_modes, on: the deprecated names of ``conv_mode`` and ``check_on`` (a
            ``DeprecationWarning``; kept as arguments so that older YAML configs still load).
        **legacy: the other deprecated names (``max_batch_elems``, ``mp_fit``, ``traps``,
            boolean ``metrics``), mapped by :func:`~svd_callback.config.legacy_options`.

    Raises:
        ValueError: an invalid value (named, with the valid ones); TypeError: an unknown name.

    Example::

        monitor = SpectralMonitor(conv_mode=("unfold", "operator"), metrics=("norms", "powerlaw"))
        stop = EarlyStopping(monitor="all_layers/alpha_mean", mode="max", patience=3)
        Trainer(max_epochs=5, callbacks=[monitor, stop]).fit(SmallCNN(), DigitsDataModule())
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        check_on: cfg.EpochHook | None = None,
        log_init: bool = True,
        conv_mode: cfg.ConvMode | Sequence[cfg.ConvMode] = ("unfold",),
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        embeddings: bool = False,
        metrics: cfg.MetricSelection | Sequence[cfg.MetricSelection] = cfg.DEFAULT_METRICS,
        normalization: cfg.Normalization | None = None,
        fit: cfg.Fit | None = "ks",
        ww_compat: bool = False,
        input_size: int | Sequence[int] | None = None,
        histograms: bool = True,
        figures_every_n: int = 10,
        figure_layers: int | str | Sequence[str] = 3,
        heatmap_decades: float | None = 2.0,
        alert_rules: Sequence[Rule | Callable[..., Any]] | None = None,
        stop_on_alert: bool = True,
        on_alert: Callable[[Alert, pl.Trainer, pl.LightningModule], Any] | None = None,
        history_file: str | None = cfg.DEFAULT_HISTORY_FILE,
        generator_seed: int = 0,
        class_analysis: bool | ClassAnalysisConfig | Mapping[str, Any] = False,
        class_probe: ProbeSet | None = None,
        per_layer_callback_metrics: bool = False,
        forward_fn: Callable[[torch.nn.Module, Any], Any] | None = None,
        svd_method: cfg.SvdMethod = "auto",
        motion_sketch: int = cfg.DEFAULT_SKETCH_SIZE,
        summary_stats: str | Sequence[str] = ("mean",),
        constant_metrics: bool = False,
        chunk_elems: int = cfg.DEFAULT_CHUNK_ELEMS,
        conv_modes: cfg.ConvMode | Sequence[cfg.ConvMode] | None = None,
        on: cfg.EpochHook | None = None,
        **legacy: Any,
    ) -> None:
        super().__init__()
        owner = "SpectralMonitor"
        conv_mode = cfg.legacy_value(owner, "conv_mode", conv_mode, "conv_modes", conv_modes,
                                     _UNSET_MODE)
        check_on = cfg.legacy_value(owner, "check_on", check_on, "on", on, (None,))
        metrics, fit, chunk_elems = cfg.legacy_options(owner, metrics, fit, chunk_elems, legacy)
        analysis = cfg.AnalysisConfig(
            conv_mode=conv_mode, include=include, exclude=exclude, metrics=metrics,
            normalization=normalization, fit=fit, ww_compat=ww_compat, svd_method=svd_method,
            input_size=input_size, generator_seed=generator_seed, chunk_elems=chunk_elems,
            embeddings=embeddings)
        self._config = cfg.MonitorConfig(
            analysis, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
            check_on=check_on, log_init=log_init, histograms=histograms,
            figures_every_n=figures_every_n, figure_layers=figure_layers,
            heatmap_decades=heatmap_decades, stop_on_alert=stop_on_alert,
            history_file=history_file, summary_stats=summary_stats,
            constant_metrics=constant_metrics, motion_sketch=motion_sketch)
        self.on_alert = check_callable("on_alert", on_alert)
        check_callable("forward_fn", forward_fn)
        class_config = ClassStage.options(class_analysis, class_probe)
        self._engine = AlertEngine(monitor_default_rules(
            self._config.analysis.metrics, class_config is not None) if alert_rules is None
            else alert_rules)
        self._guard = Guard()
        self._refused: str | None = None  # why the trainer's strategy is refused, see setup
        self._schedule = Schedule.from_config(self._config)
        self._classes = ClassStage(class_config, class_probe, self._guard, forward_fn)
        keep_svals = self._config.histograms or bool(self._config.figures_every_n)
        self._runner = AnalysisRunner(self._config.analysis, self._engine, self._classes,
                                      self._guard, keep_svals=keep_svals, forward_fn=forward_fn,
                                      motion_sketch=self._config.motion_sketch)
        self._publisher = Publisher(self._config, self._classes, self._guard,
                                    bool(per_layer_callback_metrics), engine=self._engine,
                                    schedule=self._schedule)
        self._summaries: list[dict[str, Any]] = []
        self._loaded = False

    # ------------------------------------------------------------------ public, read-only
    config = property(lambda self: self._config, doc="The validated, resolved configuration.")
    schedule = property(lambda self: self._schedule,
                        doc="The schedule (``check_on`` resolved in ``setup()``, analyses done).")
    alert_engine = property(lambda self: self._engine, doc="The alert rules and their state.")
    classes = property(lambda self: self._classes, doc="The class analysis: probe, tracker.")
    runner = property(lambda self: self._runner, doc="The analysis runner.")
    publisher = property(lambda self: self._publisher, doc="The publisher of each analysis.")
    heatmaps = property(lambda self: self._publisher.heatmaps, doc="The spectra kept for the "
                        "heat-map figures (a ``SpectrumStore``).")
    last_result = property(lambda self: self._publisher.last_result, doc="The "
                           "``AnalysisResult`` of the last analysis of this fit, or None.")
    input_sizes = property(lambda self: dict(self._runner.input_sizes),
                           doc="The recorded conv input sizes (``operator`` mode), by layer.")
    summaries = property(lambda self: [dict(e) for e in self._summaries], doc="One entry per "
                         "analysis: epoch, epochs_trained, step, trigger, seconds, training, "
                         "alerts, summary per mode.")

    @property
    def history(self) -> list[dict[str, Any]]:  # the deprecated name of summaries
        warnings.warn("SpectralMonitor.history is deprecated; use .summaries", DeprecationWarning,
                      stacklevel=2)
        return self.summaries

    @property
    @override
    def state_key(self) -> str:
        # the names of the keys predate MonitorConfig: checkpoints written before still load
        return self._generate_state_key(
            conv_modes=self._config.analysis.conv_mode, on=self._schedule.check_on,
            every_n_epochs=self._config.every_n_epochs, every_n_steps=self._config.every_n_steps)
    # ------------------------------------------------------------------ checkpoint state
    @override
    def state_dict(self) -> dict[str, Any]:
        """One entry per part (``monitor.checkpoint``: the layout, and the loader of the
        layout written before)."""
        return {"version": STATE_VERSION, "schedule": self._schedule.state_dict(),
                "runner": self._runner.state_dict(), "publisher": self._publisher.state_dict(),
                "summaries": [dict(s) for s in self._summaries]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = upgrade(state_dict)
        if state is None:
            rank_zero_warn(f"SpectralMonitor: ignoring checkpoint state of unknown version "
                           f"{state_dict.get('version')!r}; the spectral history starts afresh.")
            return
        self._schedule.load_state_dict(state["schedule"])
        self._runner.load_state_dict(state["runner"])
        self._publisher.load_state_dict(state["publisher"])
        self._summaries = [dict(s) for s in state["summaries"]]
        self._loaded = True

    def _reset_run(self) -> None:
        """The same object fitted again from scratch: forget the previous run."""
        for part in (self._schedule, self._runner, self._publisher):
            part.reset()
        self._summaries = []

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._refused = refusal(trainer.strategy)  # FSDP1, DeepSpeed: off, with one warning
        if self._refused is not None:
            return self._guard.warn(self._refused)
        if stage == TrainerFn.FITTING:
            self._schedule.resolve(**validation_settings(trainer))
        names, analysis = self._config.figure_layers, self._config.analysis
        if not isinstance(names, int):
            specs, skipped = find_layers(pl_module, analysis.include, analysis.exclude,
                                         analysis.embeddings)
            cfg.check_layer_names("figure_layers", names, [s.name for s in [*specs, *skipped]])

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._guard.reset()
        self._publisher.start_fit(trainer)
        self._runner.start_fit()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._refused is not None:
            return
        resumed = self._loaded and trainer.ckpt_path is not None
        if self._schedule.is_new_run(trainer.global_step, resumed):
            self._reset_run()
        self._loaded = False
        if trainer.is_global_zero:
            self._guard.call("preparing the history file", self._start_history, trainer, resumed)
            if resumed:
                self._guard.call("purging TensorBoard events after the checkpoint",
                                 self._publisher.purge, trainer.loggers, trainer.global_step)
        self._runner.maybe_record_input_sizes(pl_module, lambda: first_training_input(trainer))
        if self._classes.enabled and trainer.is_global_zero:
            self._guard.call("choosing the class probe", self._classes.prepare, trainer)
        if self._schedule.due_at_start(trainer.global_step):
            self._analyse(trainer, pl_module, FIT_START)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._schedule.due_at_step(trainer.global_step):
            self._analyse(trainer, pl_module, TRAIN_STEP)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end(trainer, pl_module, "train_epoch_end")

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end(trainer, pl_module, "validation_epoch_end")

    def _epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, hook: str) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and self._schedule.due_at_epoch_end(
            hook, trainer.current_epoch, trainer.global_step,
            sanity_checking=trainer.sanity_checking, fitting=fitting,
        ):
            self._analyse(trainer, pl_module, hook)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:  # the last analysis's figures, unless drawn already
            self._publisher.finish(trainer.loggers, self._schedule.analyses - 1,
                                   trainer_metrics=list(getattr(trainer, "logged_metrics", {})))

    # ------------------------------------------------------------------ one analysis
    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, trigger: str) -> None:
        """One analysis on every rank: run, record, publish, then the alerts and the stop vote."""
        if self._refused is not None:
            return
        self._runner.maybe_record_input_sizes(pl_module, lambda: first_training_input(trainer))
        result = self._runner.run(
            pl_module, step=int(trainer.global_step),
            epochs_trained=epochs_trained_at(trainer, trigger), trigger=trigger,
            training=training_scalars(trainer.callback_metrics), world=int(trainer.world_size),
            rank=int(trainer.global_rank),
            broadcast=lambda metrics: trainer.strategy.broadcast(metrics, src=0),
        )
        index = self._schedule.analyses
        self._summaries.append(result.entry())
        self._schedule.record(result.step)
        self._guard.call("recording the analysis", self._publisher.publish, result,
                         loggers=trainer.loggers, callback_metrics=trainer.callback_metrics,
                         current_epoch=trainer.current_epoch, index=index,
                         is_zero=trainer.is_global_zero,
                         trainer_metrics=list(getattr(trainer, "logged_metrics", {})))
        if self.on_alert is not None:
            for alert in result.alerts:
                self._guard.call("calling on_alert", self.on_alert, alert, trainer, pl_module)
        stop = self._config.stop_on_alert and self._engine.should_stop(list(result.alerts))
        if trainer.strategy.reduce_boolean_decision(stop, all=False):
            trainer.should_stop = True
            rank_zero_info(f"SpectralMonitor: stopping the training: {result.stop_reasons()}")

    # ------------------------------------------------------------------ history file
    def _start_history(self, trainer: pl.Trainer, resumed: bool) -> None:
        """Open this monitor's history file, distinct from the earlier monitors' of the
        Trainer, and write its ``run`` row."""
        monitors = [cb for cb in trainer.callbacks if isinstance(cb, SpectralMonitor)]
        position = next((i for i, m in enumerate(monitors) if m is self), 0)
        paths = [trainer_path(m.config.history_file, trainer) for m in [*monitors[:position], self]]
        path = distinct_path(paths[-1], paths[:-1], position, self._guard,
                             f"conv_mode={self._config.analysis.conv_mode}", bool(trainer.loggers))
        self._publisher.start_history(path, resumed=resumed, step=int(trainer.global_step),
                                      epoch=int(trainer.current_epoch),
                                      world_size=int(trainer.world_size),
                                      last_analysed=self._schedule.last_step)
