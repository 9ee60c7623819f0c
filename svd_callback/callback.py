"""``SpectralMonitor``: the Lightning callback that follows the spectra of every layer in training.

At the initial weights and then on a schedule (train-epoch end, validation-epoch end, every n
steps), the callback runs :func:`svd_callback.analysis.analyze` on the model, on the model's
device under ``torch.no_grad()``, and sends the results to

- every logger in ``trainer.loggers`` (per-layer scalars ``spectral/<metric>/<layer>``,
  aggregates ``spectral_summary/<key>``, ``alerts/count`` and ``epoch`` through ``log_metrics``);
- ``trainer.callback_metrics``: the model-level values only (aggregates such as
  ``spectral_summary/alpha_mean`` and ``alerts/count``), for ``EarlyStopping`` and
  ``ModelCheckpoint``;
- a ``TensorBoardLogger`` additionally: scalars with descriptions of how they were made,
  singular-value histograms ``spectra/<mode>/<layer>``, ESD and spectrum heat-map figures, the
  ``alerts`` text panel, the ``spectral/conventions`` text and a custom-scalar layout;
- the JSON-lines history file ``spectral_history.jsonl`` in the log directory.

After each analysis the :class:`~svd_callback.alerts.AlertEngine` rules run; their alerts are
logged, passed to a user callable, and ``stop`` alerts end the training (agreed by all ranks).
Under DDP every rank analyses its share of the layers and the results are gathered.

With ``class_analysis`` on, each analysis also runs
:func:`~svd_callback.classes.analysis.analyze_classes` on a fixed probe of validation images
(class-overlap hypergraphs of every monitored layer's top-k SVD-neurons, class-specific
penultimate features, optionally the activation factorization rank), logged as
``classes/<stat>/<layer>`` with ``class`` rows in the history file and hypergraph / overlap
figures.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch.nn.modules.lazy import LazyModuleMixin
from typing_extensions import override

from svd_callback.alerts import (
    TRAINING,
    Alert,
    AlertEngine,
    Rule,
    default_class_rules,
    default_rules,
)
from svd_callback.analysis import FITS, analyze, summarize
from svd_callback.classes.analysis import (
    ClassAnalysisConfig,
    ClassReport,
    ClassTracker,
    ProbeError,
    analyze_classes,
    class_records,
    probe_at_positions,
    probe_from_loader,
)
from svd_callback.classes.probe import ProbeSet
from svd_callback.distributed import gather_alerts, gather_reports, is_distributed, split_work
from svd_callback.layers import estimate_cost, example_input_for, find_layers, record_input_sizes
from svd_callback.report import CONV_MODES, NORMALIZATIONS, LayerReport, Report
from svd_callback.sinks import tags
from svd_callback.sinks.class_figures import hypergraph_figure, overlap_matrix_figure
from svd_callback.sinks.figures import esd_figure_for, spectrum_heatmap_grid, spectrum_quantiles
from svd_callback.sinks.history import HISTORY_FILENAME, HistoryFile, read_history
from svd_callback.sinks.layout import custom_scalar_layout
from svd_callback.sinks.tensorboard import TensorBoardSink

__all__ = ["SpectralMonitor"]

TRIGGERS = ("train_epoch_end", "validation_epoch_end")
OWN_TAG_PREFIXES = ("spectral/", "spectral_summary/", "spectra/", "classes/", "alerts/")
"""Tags this callback logs (left out of the training scalars read from ``callback_metrics``)."""
MODEL_LEVEL_PREFIXES = ("spectral_summary/",)
"""Tags that always go into ``trainer.callback_metrics`` (with ``alerts/count``)."""
_STATE_VERSION = 1
_HEATMAP_POINTS = 64
_HEATMAP_COLUMNS = 256
"""Analyses kept per layer for the heat maps: beyond it every other older column is dropped, so
the figure spans the whole run and the checkpointed state stays bounded."""


class SpectralMonitor(Callback):
    r"""Analyse the singular spectra of every conv and linear layer during training.

    The first analysis runs at the start of training on the initial weights (logged at step 0,
    epoch 0), so that every curve starts from initialisation; it is not repeated when a run
    resumes from a checkpoint. On resume, the TensorBoard events the interrupted run wrote after
    the checkpoint's step are purged (TensorBoard's ``purge_step`` semantics) and the history
    file is cut back to that step. Then the model is analysed every ``every_n_epochs`` epochs
    (at the end of the training epoch or of the validation epoch, see ``on``) and/or every
    ``every_n_steps`` optimizer steps; the sanity check is never analysed, and one global step is
    never analysed twice. The global step of every record is ``trainer.global_step``.

    The analysis never changes the model: it reads detached weights under ``torch.no_grad()``,
    switches no module's mode, touches no gradient and draws from no global random generator, so
    a seeded run ends with the same weights, bit for bit, with or without the callback. Any
    exception inside the analysis or the logging becomes a warning and training goes on; layers
    that cannot be analysed keep a reason (in the history file, and a one-time warning).

    The model-level values, the aggregates ``spectral_summary/*`` and ``alerts/count``, also go
    into ``trainer.callback_metrics``, so ``EarlyStopping`` and ``ModelCheckpoint`` can monitor
    them; the per-layer values ``spectral/*`` and ``classes/*`` go to the loggers and the history
    file only (``per_layer_callback_metrics=True`` adds them: hundreds of entries on a large
    model, which Lightning copies at every logging step and, under ``ddp_spawn``, pickles back
    to the launching process). EarlyStopping and ModelCheckpoint run after this callback at
    the end of a training epoch with Lightning's defaults; when they check at validation end
    instead (``val_check_interval < 1``, ``check_val_every_n_epoch > 1``), use
    ``on="validation_epoch_end"`` so that they see the current analysis.

    Args:
        every_n_epochs: analyse every n epochs (None or 0: no epoch schedule).
        every_n_steps: also analyse every n optimizer steps (None: never).
        on: ``"train_epoch_end"`` (default) or ``"validation_epoch_end"`` for the epoch schedule
            (in a YAML config write the key quoted, ``"on":``, since YAML 1.1 reads ``on`` as
            true).
        log_init: analyse the initial weights at the start of training.
        conv_modes: conv SVD convention(s): ``"unfold"``, ``"operator"``, ``"slices"``, or several;
            the first is the primary mode (tags ``spectral/<metric>/<layer>``), the others log as
            ``spectral/<metric>.<mode>/<layer>``. ``"operator"`` needs each conv's input size,
            recorded once at the start of training (see ``input_size``).
        include: glob patterns (``fnmatch``, e.g. ``"features.*"``, ``"*.conv2"``) a layer's
            qualified name must match to be analysed (None: every layer).
        exclude: glob patterns of layer names to leave out.
        embeddings: also analyse ``nn.Embedding`` tables (kind ``embedding``; a table tied to
            the output layer is analysed once).
        metrics: metric groups to compute and log: ``"norms"``, ``"powerlaw"``, ``"mp"``
            (Marchenko-Pastur bulk fit), ``"traps"`` (correlation traps), or ``"all"``. The history
            file keeps every metric computed.
        normalization: ESD convention ``"raw"`` (lambda = sigma^2), ``"ww"`` or ``"per_row"``
            (None: ``"raw"``, or ``"ww"`` with ``ww_compat``).
        fit: power-law fit, ``"ks"`` (KS-optimal xmin) or ``"hill"``.
        ww_compat: reproduce WeightWatcher 0.7.7's normalisation, skip rules and fit.
        input_size: spatial size of the model's input, for ``operator`` mode; by default the
            input sizes come from ``example_input_array`` or the first training sample.
        histograms: log singular-value histograms (TensorBoard).
        figures_every_n: write figures (TensorBoard) every n analyses and at the end of training
            (0: never): the ESD with its power-law and Marchenko-Pastur fits of a few layers, and
            per mode a heat map of every layer's spectrum across training. Drawing costs about
            0.3 s per ESD and 0.1 s per layer of heat map on a CPU.
        figure_layers: number of layers with an ESD figure (spread over the model) or their
            names.
        alert_rules: rules for the alert engine (None: ``default_rules()``, without the traps
            rule unless ``"traps"`` is computed, plus the class rules with
            ``class_analysis``); ``[]`` disables alerts.
        stop_on_alert: honour alerts of severity ``"stop"`` by stopping the training.
        on_alert: called as ``on_alert(alert, trainer, pl_module)`` on every rank for each alert
            raised on any rank (alerts are gathered across ranks).
        history_file: file name (relative to the log directory) or absolute path of the JSON-lines
            history; None disables it. With several monitors in one Trainer, the k-th one whose
            file coincides with an earlier monitor's writes ``<stem>-<k>.jsonl`` (a warning
            names it). A resumed run keeps the rows up to the checkpoint's step (and warns when
            the file is gone).
        generator_seed: seed of the private generator used by ``"traps"``.
        class_analysis: run the class-level analysis at every analysis: ``True`` (defaults), a
            :class:`~svd_callback.classes.analysis.ClassAnalysisConfig` or a mapping of its
            options (``probe_size=256``, ``top_k=32``, ``layers`` (default: every monitored
            layer), ``tau``/``m``, ``factorization_every_n=0`` (off), ``factorization_layers``,
            ...). The probe is chosen once, at the start of training, from the validation
            dataloader (class-stratified, private generator; batches ``(inputs, targets, ...)``
            or dicts with ``x``/``image``... and ``y``/``label``... keys) and kept in the
            checkpointed state (positions and labels), so every epoch and a resumed run see the
            same images. It runs on rank 0 only, in one forward pass of the unwrapped module in
            eval mode (each module's own mode restored, RNG forked, no gradients), and its
            values are broadcast so every rank's alert rules see them. Cost on the
            digits CNN (2 CPU threads, experiments/benchmarks/bench_classes.py): about 65 ms per
            analysis for 256 images and 5 layers, 0.2 of a training epoch; the factorization
            rank adds about 0.8 s per factorised layer. Without validation data, with
            non-integer targets or unreadable batches it is switched off with one warning.
        class_probe: a fixed :class:`~svd_callback.classes.probe.ProbeSet` to use instead of
            the validation data (turns the class analysis on).
        per_layer_callback_metrics: also put the per-layer values (``spectral/<metric>/<layer>``,
            ``classes/<stat>/<layer>``) into ``trainer.callback_metrics`` (default: only the
            model-level ``spectral_summary/*`` and ``alerts/count``).
        forward_fn: how the callback's own forward passes (the operator input-size probe, the
            class probe) run the model: ``forward_fn(model, inputs)``, where ``inputs`` are the
            batch's inputs (the first item of a tuple batch, the ``x``/``input``/``image``...
            entry of a dict batch, or ``example_input_array``). None: ``model(inputs)``; for
            dict batches, a model that rejects the tensor gets ``{key: inputs}``, the dict
            with the input key alone (a forward that needs more keys needs ``forward_fn``).

    Raises:
        ValueError: on any invalid argument, naming it and the value given.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.callbacks import EarlyStopping
        from svd_callback import SpectralMonitor
        from svd_callback.examples import DigitsDataModule, SmallCNN

        monitor = SpectralMonitor(conv_modes=("unfold", "operator"), metrics=("norms", "powerlaw"))
        stop = EarlyStopping(monitor="spectral_summary/alpha_mean", mode="max", patience=3)
        Trainer(max_epochs=5, callbacks=[monitor, stop]).fit(SmallCNN(), DigitsDataModule())
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        on: str = "train_epoch_end",
        log_init: bool = True,
        conv_modes: str | Sequence[str] = ("unfold",),
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        embeddings: bool = False,
        metrics: str | Sequence[str] = ("norms", "powerlaw"),
        normalization: str | None = None,
        fit: str = "ks",
        ww_compat: bool = False,
        input_size: int | Sequence[int] | None = None,
        histograms: bool = True,
        figures_every_n: int = 10,
        figure_layers: int | Sequence[str] = 3,
        alert_rules: Sequence[Rule | Callable[..., Any]] | None = None,
        stop_on_alert: bool = True,
        on_alert: Callable[[Alert, pl.Trainer, pl.LightningModule], Any] | None = None,
        history_file: str | None = HISTORY_FILENAME,
        generator_seed: int = 0,
        class_analysis: bool | ClassAnalysisConfig | Mapping[str, Any] = False,
        class_probe: ProbeSet | None = None,
        per_layer_callback_metrics: bool = False,
        forward_fn: Callable[[torch.nn.Module, Any], Any] | None = None,
    ) -> None:
        super().__init__()
        self.every_n_epochs = _check_count("every_n_epochs", every_n_epochs)
        self.every_n_steps = _check_count("every_n_steps", every_n_steps)
        if on not in TRIGGERS:
            raise ValueError(f"on must be one of {TRIGGERS}, got {on!r}")
        self.on = on
        self.log_init = bool(log_init)
        self.conv_modes = _check_modes(conv_modes)
        self.include = _check_patterns("include", include)
        self.exclude = _check_patterns("exclude", exclude)
        self.embeddings = bool(embeddings)
        self.metric_groups = _check_groups(metrics)
        if normalization is not None and normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS} or None, got {normalization!r}"
            )
        if ww_compat and normalization not in (None, "ww"):
            raise ValueError(f"ww_compat=True implies normalization='ww', got {normalization!r}")
        self.normalization = normalization or ("ww" if ww_compat else "raw")
        if fit not in FITS or fit is None:
            raise ValueError(f"fit must be one of {[f for f in FITS if f]}, got {fit!r}")
        self.fit = fit
        self.ww_compat = bool(ww_compat)
        self.input_size = _check_input_size(input_size)
        self.histograms = bool(histograms)
        if isinstance(figures_every_n, bool) or not isinstance(figures_every_n, int) or (
            figures_every_n < 0
        ):
            raise ValueError(f"figures_every_n must be an integer >= 0, got {figures_every_n!r}")
        self.figures_every_n = figures_every_n
        self.figure_layers = _check_figure_layers(figure_layers)
        if on_alert is not None and not callable(on_alert):
            raise ValueError(f"on_alert must be callable or None, got {on_alert!r}")
        self.on_alert = on_alert
        self.stop_on_alert = bool(stop_on_alert)
        if history_file is not None and (not isinstance(history_file, str) or not history_file):
            raise ValueError(
                f"history_file must be a non-empty string or None, got {history_file!r}"
            )
        self.history_file = history_file
        if isinstance(generator_seed, bool) or not isinstance(generator_seed, int):
            raise ValueError(f"generator_seed must be an integer, got {generator_seed!r}")
        self.generator_seed = generator_seed
        if class_probe is not None and not isinstance(class_probe, ProbeSet):
            raise ValueError(f"class_probe must be a ProbeSet or None, got {class_probe!r}")
        self.class_probe = class_probe
        self.class_config = ClassAnalysisConfig.coerce(class_analysis)
        self.per_layer_callback_metrics = bool(per_layer_callback_metrics)
        if forward_fn is not None and not callable(forward_fn):
            raise ValueError(f"forward_fn must be callable or None, got {forward_fn!r}")
        self.forward_fn = forward_fn
        if self.class_config is None and class_probe is not None:
            self.class_config = ClassAnalysisConfig()
        if alert_rules is None:
            alert_rules = default_rules(traps="traps" in self.metric_groups)
            if self.class_config is not None:
                alert_rules += default_class_rules()
        self.alert_engine = AlertEngine(alert_rules)
        self._initial_engine_state = self.alert_engine.state_dict()

        self.logged_metrics = self._selected_metrics()
        self._reset_run_state()
        self._reset_fit_state()

    # ------------------------------------------------------------------ state
    def _reset_run_state(self) -> None:
        """State that belongs to one training run and goes into checkpoints."""
        self._analyses = 0
        self._last_step: int | None = None
        self._input_sizes: dict[str, tuple[int, ...]] = {}
        self._summaries: list[dict[str, Any]] = []
        self._spectra: dict[str, dict[str, list]] = {}
        self._figure_names: list[str] | None = None
        self._history_path: str | None = None
        self._loaded = False
        self._class_probe: ProbeSet | None = None
        self._class_probe_state: dict[str, Any] | None = None
        self._class_probe_key: str | None = None
        self._class_tracker = ClassTracker()
        self._training: dict[str, float] = {}

    def _reset_fit_state(self) -> None:
        """State of one ``trainer.fit`` call (writers, one-time messages)."""
        self._sinks: dict[int, TensorBoardSink] = {}
        self._layouts: dict[int, tuple[set[str], set[str], set[str]]] = {}
        self._fit_started_logging = False
        self._warned: set[str] = set()
        self._last_report: Report | None = None
        self._last_figure_analysis = -1
        self._owners: dict[str, int] = {}
        self._last_class_report: ClassReport | None = None
        self._sizes_tried = False
        self._alert_ranks: dict[int, tuple[int, ...]] = {}
        self._world = 1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            conv_modes=self.conv_modes, on=self.on, every_n_epochs=self.every_n_epochs,
            every_n_steps=self.every_n_steps,
        )

    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per analysis: ``epoch``, ``epochs_trained``, ``step``, ``trigger`` and the
        model-level ``summary`` per mode (as :func:`~svd_callback.analysis.summarize`)."""
        return [dict(entry) for entry in self._summaries]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "analyses": self._analyses,
            "last_step": self._last_step,
            "input_sizes": {k: list(v) for k, v in self._input_sizes.items()},
            "summaries": [dict(s) for s in self._summaries],
            "spectra": {k: {"epochs": list(v["epochs"]), "quantiles": v["quantiles"].clone()}
                        for k, v in self._spectra.items()},
            "figure_names": None if self._figure_names is None else list(self._figure_names),
            "history_path": self._history_path,
            "alert_engine": self.alert_engine.state_dict(),
            "training": dict(self._training),
            "classes": {
                "probe": None if self._class_probe_state is None else dict(self._class_probe_state),
                "tracker": self._class_tracker.state_dict(),
            },
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != _STATE_VERSION:
            rank_zero_warn(
                f"SpectralMonitor: ignoring checkpoint state of unknown version "
                f"{state_dict.get('version')!r}; the spectral history starts afresh."
            )
            return
        self._analyses = int(state_dict["analyses"])
        self._last_step = state_dict["last_step"]
        self._input_sizes = {k: tuple(v) for k, v in state_dict["input_sizes"].items()}
        self._summaries = [dict(s) for s in state_dict["summaries"]]
        self._spectra = {
            k: {"epochs": list(v["epochs"]), "quantiles": torch.as_tensor(v["quantiles"]).float()}
            for k, v in state_dict["spectra"].items()
        }
        self._figure_names = state_dict["figure_names"]
        self._history_path = state_dict["history_path"]
        self.alert_engine.load_state_dict(state_dict["alert_engine"])
        self._training = {str(k): float(v) for k, v in state_dict.get("training", {}).items()}
        classes = state_dict.get("classes")
        if classes is not None:
            self._class_probe_state = classes["probe"]
            self._class_probe = None  # rebuilt from the recorded positions at train start
            self._class_tracker.load_state_dict(classes["tracker"])
        self._loaded = True

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_fit_state()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resumed = self._loaded and trainer.ckpt_path is not None
        if not resumed and trainer.global_step == 0 and self._analyses > 0:
            self._reset_run_state()  # the same callback object used for a new run
            self.alert_engine.load_state_dict(self._initial_engine_state)
        self._loaded = False
        if trainer.is_global_zero:
            self._guarded("preparing the history file", self._start_history, trainer, resumed)
            if resumed:
                self._guarded("purging TensorBoard events after the checkpoint",
                              self._purge_tensorboard, trainer)
        self._maybe_record_input_sizes(trainer, pl_module)
        if self.class_config is not None and trainer.is_global_zero:
            self._guarded("choosing the class probe", self._prepare_class_probe, trainer)
        if self.log_init and self._analyses == 0 and trainer.global_step == 0:
            self._analyse(trainer, pl_module, "fit_start")

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._analyse(trainer, pl_module, "train_step")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on == "train_epoch_end" and self._epoch_due(trainer):
            self._analyse(trainer, pl_module, "train_epoch_end")

    @override
    def on_validation_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        if (
            self.on == "validation_epoch_end"
            and not trainer.sanity_checking
            and trainer.state.fn == TrainerFn.FITTING
            and self._epoch_due(trainer)
        ):
            self._analyse(trainer, pl_module, "validation_epoch_end")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            trainer.is_global_zero
            and self.figures_every_n
            and self._last_report is not None
            and self._last_figure_analysis != self._analyses - 1
            and self._tensorboard_sinks(trainer)
        ):
            entry = self._summaries[-1]
            self._guarded(
                "writing the final figures", self._write_figures, trainer, self._last_report,
                entry["step"], entry["epochs_trained"],
            )
            self._last_figure_analysis = self._analyses - 1
        for sink in self._sinks.values():
            self._guarded("flushing TensorBoard", sink.flush)

    # ------------------------------------------------------------------ schedule
    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        return bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @staticmethod
    def _epochs_trained(trainer: pl.Trainer, trigger: str) -> float:
        """Training epochs done when the weights were read: 0 at initialisation, k after k
        epochs, fractional in the middle of an epoch."""
        if trigger == "fit_start":
            return 0.0
        epoch = trainer.current_epoch
        if trigger == "train_epoch_end":
            return float(epoch + 1)
        total = trainer.num_training_batches
        try:
            done = trainer.fit_loop.epoch_loop.batch_idx + 1
        except Exception:  # a loop without batch progress
            return float(epoch)
        if not isinstance(total, (int, float)) or not math.isfinite(total) or total <= 0:
            return float(epoch)
        return float(epoch) + min(max(done, 0), total) / total

    # ------------------------------------------------------------------ analysis
    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, trigger: str) -> None:
        """One analysis on every rank: local share, gather, aggregates, alerts, logging."""
        step = int(trainer.global_step)
        if self._last_step is not None and step == self._last_step and self._analyses > 0:
            return
        started = time.perf_counter()
        epochs_trained = self._epochs_trained(trainer, trigger)
        epoch = int(math.floor(epochs_trained))
        world = int(trainer.world_size)

        self._maybe_record_input_sizes(trainer, pl_module)
        local, order = self._local_report(pl_module, world, int(trainer.global_rank))
        report = gather_reports(local, world, order, self.conv_modes)  # collective on all ranks
        class_metrics = self._class_analysis(trainer, pl_module)  # computed on rank 0, broadcast

        alerts: list[Alert] = []
        try:
            alerts = self._record(trainer, report, step, epoch, epochs_trained, trigger, started,
                                  class_metrics)
        except Exception as error:  # noqa: BLE001 - never crash training
            self._warn(f"recording the analysis failed: {type(error).__name__}: {error}")
        for alert in alerts:
            if self.on_alert is not None:
                self._guarded("calling on_alert", self.on_alert, alert, trainer, pl_module)
        stop = self.stop_on_alert and self.alert_engine.should_stop(alerts)
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.should_stop = True
            reasons = "; ".join(a.message + self._raised_on(a) for a in alerts
                                if a.severity == "stop")
            rank_zero_info(f"SpectralMonitor: stopping the training: {reasons or 'stop alert'}")

    def _record(
        self,
        trainer: pl.Trainer,
        report: Report,
        step: int,
        epoch: int,
        epochs_trained: float,
        trigger: str,
        started: float,
        class_metrics: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[Alert]:
        """Aggregates, alerts, ``callback_metrics`` and the state (every rank); logging (rank 0).
        Returns the alerts raised."""
        summary: dict[str, dict[str, float]] = {}
        alerts: list[Alert] = []
        class_metrics = class_metrics or {}
        # the losses logged before a checkpoint are gone from a resumed trainer's
        # callback_metrics until it logs them again: the state keeps them
        training = {**self._training, **self._training_scalars(trainer)}
        self._training = dict(training)
        try:
            summary = summarize(report)
            alerts = self.alert_engine.update(
                epoch, step, [*report, *class_records(class_metrics)],
                {**summary, TRAINING: training} if training else summary,
            )
        except Exception as error:  # noqa: BLE001 - never crash training
            self._warn(f"computing aggregates and alerts failed: {type(error).__name__}: {error}")
        # collective on every rank: a rule may fire on one rank only; rank 0 records them all
        alerts = self._gather_alerts(trainer, alerts)
        scalars, descriptions = self._scalars(report, summary, len(alerts))
        class_scalars, class_descriptions = self._class_scalars(class_metrics)
        scalars.update(class_scalars)
        descriptions.update(class_descriptions)
        trainer.callback_metrics.update({
            tag: torch.tensor(value, dtype=torch.float32) for tag, value in scalars.items()
            if self.per_layer_callback_metrics or _is_model_level(tag)
        })
        entry = {
            "epoch": epoch,
            "epochs_trained": epochs_trained,
            "step": step,
            "trigger": trigger,
            "seconds": time.perf_counter() - started,
            "summary": {m: dict(v) for m, v in summary.items()},
            "training": training,
            "alerts": len(alerts),
        }
        index = self._analyses
        self._summaries.append(entry)
        self._analyses += 1
        self._last_step = step
        self._last_report = report
        self._guarded("storing spectra for the heat maps", self._store_spectra, report,
                      epochs_trained)
        if trainer.is_global_zero:
            self._guarded(
                "logging the analysis", self._log, trainer, report, summary, scalars,
                descriptions, alerts, entry, index,
            )
        return alerts

    def _gather_alerts(self, trainer: pl.Trainer, alerts: list[Alert]) -> list[Alert]:
        """The alerts of every rank (merged), remembering which ranks raised each one."""
        world, rank = int(trainer.world_size), int(trainer.global_rank)
        try:
            merged = gather_alerts(alerts, world, rank)
        except Exception as error:  # noqa: BLE001 - never crash training
            self._warn(f"gathering the alerts of every rank failed: {type(error).__name__}: "
                       f"{error}; rank {rank} records its own")
            merged = [(alert, (rank,)) for alert in alerts]
        self._alert_ranks = {id(alert): ranks for alert, ranks in merged}
        self._world = world
        return [alert for alert, _ in merged]

    def _raised_on(self, alert: Alert) -> str:
        """`` (rank r)`` for an alert raised on some ranks only of a multi-process run."""
        ranks = self._alert_ranks.get(id(alert))
        if not ranks or self._world <= 1 or len(ranks) == self._world:
            return ""
        return f" (rank {', '.join(map(str, ranks))})"

    @staticmethod
    def _training_scalars(trainer: pl.Trainer) -> dict[str, float]:
        """The trainer's own logged scalars (``val_loss``, ``train_loss``, ...; not this
        callback's tags), for rules such as :class:`~svd_callback.alerts.GeneralizationGap`."""
        out: dict[str, float] = {}
        try:
            for key, value in dict(trainer.callback_metrics).items():
                if str(key).startswith(OWN_TAG_PREFIXES):
                    continue
                if isinstance(value, torch.Tensor):
                    if value.numel() != 1:
                        continue
                    value = value.item()
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[str(key)] = float(value)
        except Exception:  # noqa: BLE001 - an odd metric must not cost the analysis
            return out
        return out

    def _local_report(
        self, pl_module: pl.LightningModule, world: int, rank: int
    ) -> tuple[Report, list[str]]:
        """This rank's share of the layers, analysed; errors become records with a reason."""
        names: list[str] = []
        share: list[str] | None = None
        try:
            specs, skipped = find_layers(pl_module, self.include, self.exclude, self.embeddings)
            names = [s.name for s in specs] + [s.name for s in skipped]
            if is_distributed(world):
                for spec in specs:
                    if spec.name in self._input_sizes:
                        spec.input_size = tuple(self._input_sizes[spec.name])
                costs = {s.name: sum(estimate_cost(s, m) for m in self.conv_modes) for s in specs}
                costs.update({s.name: 0.0 for s in skipped})
                shares = split_work(costs, world)
                self._owners = {n: r for r, part in enumerate(shares) for n in part}
                share = shares[rank]
            with torch.no_grad():
                report = analyze(
                    pl_module,
                    conv_mode=self.conv_modes,
                    input_sizes=dict(self._input_sizes) or None,
                    include=self.include,
                    exclude=self.exclude,
                    layer_names=share,
                    normalization=self.normalization,
                    ww_compat=self.ww_compat,
                    fit=self.fit if "powerlaw" in self.metric_groups else None,
                    mp_fit="mp" in self.metric_groups,
                    traps="traps" in self.metric_groups,
                    generator_seed=self.generator_seed,
                    embeddings=self.embeddings,
                    keep_svals=self.histograms or bool(self.figures_every_n),
                )
            return report, names
        except Exception as error:  # noqa: BLE001 - never crash training
            reason = f"analysis failed on rank {rank}: {type(error).__name__}: {error}"
            warnings.warn(f"SpectralMonitor: {reason}", stacklevel=2)
            failed = names if share is None else share
            report = Report(
                LayerReport(name, "unknown", mode, self.normalization, reason=reason)
                for mode in self.conv_modes
                for name in failed
            )
            return report, names

    def _maybe_record_input_sizes(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        """Record the conv input sizes once (``operator`` mode), never before the model's own
        first forward has materialised its lazy modules: a probe pass would initialise them
        from a different random state than the training would."""
        if "operator" not in self.conv_modes or self._input_sizes or self._sizes_tried:
            return
        if _has_uninitialised_lazy(pl_module):
            self._note_once("lazy-sizes", "the model has lazy modules not materialised yet; the "
                            "conv input sizes (operator mode) are recorded after its first "
                            "forward")
            return
        self._sizes_tried = True
        self._record_input_sizes(trainer, pl_module)

    def _runner(self, key: str | None) -> Callable[[torch.nn.Module, Any], Any] | None:
        """How to run the model on inputs taken from a batch (``key``: their key in a dict
        batch): the user's ``forward_fn``, else the default (None when there is no key)."""
        if self.forward_fn is not None:
            return self.forward_fn
        return None if key is None else functools.partial(_tensor_or_dict_forward, key=key)

    def _note_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_info(f"SpectralMonitor: {message}.")

    def _record_input_sizes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Spatial input size of every conv, from one probe pass (``operator`` mode)."""
        key = None
        try:
            if self.input_size is not None:
                example = example_input_for(pl_module, self.input_size)
                source = f"input_size={self.input_size}"
            elif getattr(pl_module, "example_input_array", None) is not None:
                example = pl_module.example_input_array
                source = "example_input_array"
            else:
                example, key = _first_training_input(trainer)
                source = "the first training sample"
            if example is None:
                raise ValueError(
                    "no input to probe with: set example_input_array on the LightningModule or "
                    "pass input_size= to SpectralMonitor"
                )
            specs, _ = find_layers(pl_module, self.include, self.exclude, self.embeddings)
            with torch.no_grad():
                self._input_sizes = record_input_sizes(pl_module, example, specs,
                                                       self._runner(key))
            rank_zero_info(
                f"SpectralMonitor: recorded the input sizes of {len(self._input_sizes)} conv "
                f"layers from {source}."
            )
        except Exception as error:  # noqa: BLE001 - operator mode then skips convs with a reason
            self._warn(
                f"could not record conv input sizes ({type(error).__name__}: {error}); operator "
                f"mode will skip conv layers"
            )

    # ------------------------------------------------------------------ class analysis
    def _prepare_class_probe(self, trainer: pl.Trainer) -> None:
        """The class probe (rank 0): the user's, the checkpoint's positions in the validation
        data, or a new class-stratified choice from it. Without usable data the class analysis
        is switched off for this fit with one warning."""
        if self._class_probe is not None:
            return
        if self.class_probe is not None:
            self._class_probe = self.class_probe
            self._class_probe_state = _probe_state(self.class_probe, "class_probe")
            return
        config = self.class_config
        assert config is not None
        loader = _validation_loader(trainer)
        if loader is None:
            self._class_off("there is no validation dataloader to draw the probe from (pass "
                            "class_probe=)")
            return
        recorded = self._class_probe_state
        probe = None
        loader = _KeyRecorder(loader)
        with isolate_rng():  # iterating a loader draws its base seed from the global RNG
            if recorded is not None and recorded.get("source") == "val_dataloader":
                try:
                    probe = probe_at_positions(loader, recorded["indices"], recorded["labels"])
                except ProbeError as error:
                    self._warn(f"the recorded class probe could not be restored ({error}); a "
                               f"new one is chosen, the class statistics start afresh")
                    self._class_tracker = ClassTracker()
            if probe is None:
                try:
                    probe = probe_from_loader(loader, config.probe_size, config.seed,
                                              config.probe_batches)
                except ProbeError as error:
                    self._class_off(f"no class probe from the validation data: {error}")
                    return
        self._class_probe = probe
        self._class_probe_key = loader.key
        self._class_probe_state = _probe_state(probe, "val_dataloader")
        classes = int(torch.unique(probe.labels).numel())
        rank_zero_info(f"SpectralMonitor: class analysis on a fixed probe of {len(probe)} "
                       f"validation images ({classes} classes).")

    def _class_off(self, reason: str) -> None:
        if "classes-off" not in self._warned:
            self._warned.add("classes-off")
            self._warn(f"class analysis disabled: {reason}")

    def _class_analysis(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, dict[str, float]]:
        """Class statistics per layer (for the alert records and scalars), on every rank.

        Computed on rank 0 alone (one forward pass of the unwrapped module, no collective
        inside) and broadcast by all ranks afterwards, so every rank gets the same values."""
        if self.class_config is None:
            return {}
        report = None
        if trainer.is_global_zero and self._class_probe is not None:
            if _has_uninitialised_lazy(pl_module):
                self._note_once("lazy-classes", "the model has lazy modules not materialised "
                                "yet; the class analysis starts after its first forward")
            else:
                report = self._guarded("the class analysis", self._run_class_analysis,
                                       pl_module)
        self._last_class_report = report
        metrics = {} if report is None else report.record_metrics()
        if is_distributed(int(trainer.world_size)):
            metrics = trainer.strategy.broadcast(metrics, src=0)
        return metrics

    def _run_class_analysis(self, pl_module: pl.LightningModule) -> ClassReport:
        specs, _ = find_layers(pl_module, self.include, self.exclude, self.embeddings)
        report = analyze_classes(pl_module, self._class_probe, self.class_config,
                                 layers=[s.name for s in specs if s.is_module_weight],
                                 tracker=self._class_tracker,
                                 forward=self._runner(self._class_probe_key))
        for key, reason in report.reasons.items():
            if f"classes:{key}:{reason}" not in self._warned:
                self._warned.add(f"classes:{key}:{reason}")
                rank_zero_warn(f"SpectralMonitor: class analysis, {key}: {reason}")
        return report

    def _class_scalars(
        self, metrics: Mapping[str, Mapping[str, float]]
    ) -> tuple[dict[str, float], dict[str, str]]:
        """``classes/<stat>/<layer>`` values (finite, per-class keys left out) and descriptions."""
        values: dict[str, float] = {}
        descriptions: dict[str, str] = {}
        how = self._class_conventions()
        for layer, stats in metrics.items():
            for stat, value in stats.items():
                if "/" in stat or not math.isfinite(value):
                    continue
                tag = tags.class_tag(stat, layer)
                values[tag] = float(value)
                descriptions[tag] = tags.class_description(stat, how)
        return values, descriptions

    def _class_conventions(self) -> str:
        config = self.class_config
        if config is None:
            return ""
        size = len(self._class_probe) if self._class_probe is not None else config.probe_size
        rule = f"tau={config.tau}" if config.m is None else f"m={config.m}"
        return (f"fixed class-stratified probe of {size} images, eval mode; top-{config.top_k} "
                f"unfold SVD-neurons per layer, hyperedges {rule}; features: input of the "
                f"penultimate layer, mass {config.feature_mass}")

    def _write_class_history(self, class_report: ClassReport, entry: dict[str, Any]) -> None:
        if self._history_path is None:
            return
        config = self.class_config
        common = {
            "epoch": entry["epoch"],
            "epochs_trained": entry["epochs_trained"],
            "step": entry["step"],
            "trigger": entry["trigger"],
            "probe_size": len(self._class_probe) if self._class_probe is not None else 0,
            "top_k": config.top_k if config else None,
            "tau": config.tau if config else None,
            "m": config.m if config else None,
        }
        HistoryFile(self._history_path).append(
            [{**row, **common} for row in class_report.rows()]
        )

    def _write_class_figures(
        self, sinks: Any, class_report: ClassReport, step: int
    ) -> None:
        """The hypergraph and class-overlap matrix of the last analysed layer."""
        layers = list(class_report.n_nodes)
        if not layers:
            return
        layer = layers[-1]
        hypergraph = hypergraph_figure(
            class_report.edges[layer], class_report.n_nodes[layer], class_report.num_classes,
            title=f"class hypergraph {layer} (step {step})",
        )
        overlap = overlap_matrix_figure(
            class_report.jaccard[layer].numpy(),
            title=f"class overlap (Jaccard of hyperedges) {layer} (step {step})",
        )
        for sink in sinks:
            sink.figure(tags.class_figure_tag("hypergraph", layer), hypergraph, step)
            sink.figure(tags.class_figure_tag("overlap", layer), overlap, step)

    def _store_spectra(self, report: Report, epochs_trained: float) -> None:
        """Every layer's spectrum resampled to a few rank fractions, for the heat maps."""
        if not self.figures_every_n:
            return
        if self._figure_names is None:
            self._figure_names = self._choose_figure_layers(report)
        for record in report:
            if record.svals is None:
                continue
            key = f"{record.mode}/{record.name}"
            row = spectrum_quantiles(record.svals.detach().cpu().numpy(), _HEATMAP_POINTS)
            row = torch.as_tensor(row, dtype=torch.float32).unsqueeze(0)
            store = self._spectra.get(key)
            if store is None:
                self._spectra[key] = {"epochs": [float(epochs_trained)], "quantiles": row}
            else:
                store["epochs"].append(float(epochs_trained))
                store["quantiles"] = torch.cat([store["quantiles"], row])
                if len(store["epochs"]) > _HEATMAP_COLUMNS:
                    keep = [*range(0, len(store["epochs"]) - 1, 2), len(store["epochs"]) - 1]
                    store["epochs"] = [store["epochs"][i] for i in keep]
                    store["quantiles"] = store["quantiles"][keep]

    def _choose_figure_layers(self, report: Report) -> list[str]:
        names = [r.name for r in report.by_mode(self.conv_modes[0]).analysed()]
        if not isinstance(self.figure_layers, int):
            return [n for n in self.figure_layers if n in names]
        if len(names) <= self.figure_layers:
            return names
        picks = np.unique(np.linspace(0, len(names) - 1, self.figure_layers).round().astype(int))
        return [names[i] for i in picks]

    # ------------------------------------------------------------------ values
    def _selected_metrics(self) -> tuple[str, ...]:
        return tags.metrics_for_groups(self.metric_groups)

    def _scalars(
        self, report: Report, summary: Mapping[str, Mapping[str, float]], n_alerts: int
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Finite per-layer and summary values by tag, and their descriptions."""
        primary = self.conv_modes[0]
        selected = set(self.logged_metrics)
        values: dict[str, float] = {}
        descriptions: dict[str, str] = {}
        for record in report:
            if record.skipped:
                continue
            for metric in self.logged_metrics:
                value = record.metrics.get(metric)
                if value is None or not math.isfinite(value):
                    continue
                tag = tags.layer_tag(metric, record.name, record.mode, primary)
                values[tag] = float(value)
                descriptions[tag] = tags.metric_description(
                    metric, record.mode, record.normalization, self._fit_used(), self.ww_compat
                )
        for mode, aggregates in summary.items():
            for key, value in aggregates.items():
                base = key.rsplit("_", 1)[0] if key.endswith(("_mean", "_median")) else None
                if base is not None and base not in selected:
                    continue
                if not math.isfinite(value):
                    continue
                tag = tags.summary_tag(key, mode, primary)
                values[tag] = float(value)
                descriptions[tag] = tags.summary_description(
                    key, mode, self.normalization, self._fit_used(), self.ww_compat
                )
        values[tags.ALERT_COUNT_TAG] = float(n_alerts)
        descriptions[tags.ALERT_COUNT_TAG] = "number of spectral alerts raised by this analysis"
        return values, descriptions

    def _fit_used(self) -> str | None:
        return self.fit if "powerlaw" in self.metric_groups else None

    # ------------------------------------------------------------------ logging (rank 0)
    def _log(
        self,
        trainer: pl.Trainer,
        report: Report,
        summary: Mapping[str, Mapping[str, float]],
        scalars: dict[str, float],
        descriptions: dict[str, str],
        alerts: list[Alert],
        entry: dict[str, Any],
        index: int,
    ) -> None:
        step = entry["step"]
        self._warn_skipped(report)
        for alert in alerts:
            rank_zero_warn(f"SpectralMonitor alert [{alert.severity}] {alert.message}"
                           f"{self._raised_on(alert)}")
        self._guarded("writing the history file", self._write_history, report, alerts, entry)
        if self._last_class_report is not None:
            self._guarded("writing the class history", self._write_class_history,
                          self._last_class_report, entry)

        sinks = self._tensorboard_sinks(trainer)
        for logger in trainer.loggers:
            if id(logger) in sinks:
                continue
            self._guarded(
                f"logging to {type(logger).__name__}", _log_to_logger, logger,
                {**scalars, tags.EPOCH_TAG: float(trainer.current_epoch)}, step,
            )
        if not trainer.loggers and "no-logger" not in self._warned:
            self._warned.add("no-logger")
            rank_zero_info(
                "SpectralMonitor: the trainer has no logger; the spectral history goes to "
                f"{self._history_path or 'nowhere (history_file=None)'} and "
                "trainer.callback_metrics only."
            )
        for key, sink in sinks.items():
            logger = next(lg for lg in trainer.loggers if id(lg) == key)
            self._guarded(
                "writing TensorBoard scalars", self._write_tensorboard, trainer, logger, sink,
                report, scalars, descriptions, alerts, step,
            )
        due = self.figures_every_n and index % self.figures_every_n == 0
        if due and sinks:
            self._guarded(
                "writing figures", self._write_figures, trainer, report, step,
                entry["epochs_trained"],
            )
            self._last_figure_analysis = index
        for sink in sinks.values():
            self._guarded("flushing TensorBoard", sink.flush)
        self._fit_started_logging = True

    def _tensorboard_sinks(self, trainer: pl.Trainer) -> dict[int, TensorBoardSink]:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and id(logger) not in self._sinks:
                self._sinks[id(logger)] = TensorBoardSink(logger.experiment)
        return {k: v for k, v in self._sinks.items()
                if any(id(lg) == k for lg in trainer.loggers)}

    def _write_tensorboard(
        self,
        trainer: pl.Trainer,
        logger: TensorBoardLogger,
        sink: TensorBoardSink,
        report: Report,
        scalars: dict[str, float],
        descriptions: dict[str, str],
        alerts: list[Alert],
        step: int,
    ) -> None:
        if not self._fit_started_logging:
            sink.text(
                tags.CONVENTIONS_TAG, self._conventions_markdown(), step,
                description="how the spectral metrics of this run were computed",
            )
        self._update_layout(sink, scalars)
        sink.scalars(scalars, step, descriptions)
        logger.log_metrics({tags.EPOCH_TAG: float(trainer.current_epoch)}, step)
        if self.histograms:
            for record in report:
                if record.svals is None:
                    continue
                sink.histogram(
                    tags.spectrum_tag(record.mode, record.name),
                    record.svals.detach().cpu().double().numpy(), step,
                    description=tags.spectrum_description(record.mode, record.normalization),
                )
        if alerts:
            sink.text(tags.ALERT_TEXT_TAG, _alerts_markdown(alerts, self._raised_on), step,
                      description="spectral alerts raised by the analysis at this step")

    def _update_layout(self, sink: TensorBoardSink, scalars: Mapping[str, float]) -> None:
        """(Re)write the custom-scalar layout when metrics appear that it does not chart yet:
        one chart per metric present, never an empty one."""
        metrics = {t.split("/")[1].split(".")[0] for t in scalars if t.startswith("spectral/")}
        summary = {t.split("/", 1)[1].split(".")[0] for t in scalars
                   if t.startswith("spectral_summary/")}
        classes = {t.split("/")[1] for t in scalars if t.startswith("classes/")}
        known = self._layouts.setdefault(id(sink), (set(), set(), set()))
        if metrics <= known[0] and summary <= known[1] and classes <= known[2]:
            return
        known[0].update(metrics)
        known[1].update(summary)
        known[2].update(classes)
        charted = [m for m in self.logged_metrics if m in known[0]]
        class_stats = [s for s in tags.CLASS_STAT_DESCRIPTIONS if s in known[2]]
        class_stats += sorted(known[2] - set(class_stats))
        sink.layout(custom_scalar_layout(charted, self.conv_modes, sorted(known[1]), class_stats))

    def _write_figures(
        self, trainer: pl.Trainer, report: Report, step: int, epochs_trained: float
    ) -> None:
        """ESD figures of the figure layers and one spectrum heat-map grid per mode."""
        sinks = self._tensorboard_sinks(trainer).values()
        for mode in self.conv_modes:
            for name in self._figure_names or []:
                record = report.get(name, mode)
                if record is None or record.svals is None:
                    continue
                how = tags.short_conventions(mode, record.normalization, self._fit_used())
                figure = esd_figure_for(record, how, epochs_trained)
                for sink in sinks:
                    sink.figure(tags.figure_tag("esd", mode, name), figure, step)
            names = [r.name for r in report.by_mode(mode) if f"{mode}/{r.name}" in self._spectra]
            if not names:
                continue
            stores = [self._spectra[f"{mode}/{name}"] for name in names]
            figure = spectrum_heatmap_grid(
                names,
                [store["epochs"] for store in stores],
                [list(store["quantiles"].numpy()) for store in stores],
                title=f"singular values across training [{mode}]: log10(sigma / layer max) "
                f"vs epochs trained, rows = rank fraction",
            )
            for sink in sinks:
                sink.figure(tags.figure_tag("heatmap", mode), figure, step)
        if self._last_class_report is not None:
            self._write_class_figures(sinks, self._last_class_report, step)

    def _start_history(self, trainer: pl.Trainer, resumed: bool) -> None:
        """Resolve the history path; on resume keep only the rows up to the restored step."""
        path = self._resolve_history_path(trainer)
        if path is None:
            return
        history = HistoryFile(path)
        previous = self._history_path
        if resumed and previous:
            # rows written after the checkpoint would be written again: keep those up to its
            # step; a new log directory starts with a copy of the checkpoint's history
            kept = _rows_up_to(previous, trainer.global_step)
            if kept is None:
                self._warn(f"the checkpoint's spectral history {previous} is gone; {path} holds "
                           f"the rows from step {trainer.global_step} on only")
            same_file = Path(previous).resolve() == path.resolve()
            if kept is not None and (same_file or history.size() == 0):
                _rewrite(history, kept)
                rank_zero_info(
                    f"SpectralMonitor: resuming the spectral history in {path} at step "
                    f"{trainer.global_step} ({len(kept)} earlier rows kept)."
                )
        self._history_path = str(path)
        history.append([{
            "type": "run",
            "event": "resume" if resumed else "start",
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "time": time.time(),
            "mode": self.conv_modes[0],
            "modes": list(self.conv_modes),
            "normalization": self.normalization,
            "fit": self._fit_used(),
            "ww_compat": self.ww_compat,
            "metric_groups": list(self.metric_groups),
            "conventions": {m: tags.conventions(m, self.normalization, self._fit_used(),
                                                self.ww_compat) for m in self.conv_modes},
            "world_size": int(trainer.world_size),
        }])

    def _purge_tensorboard(self, trainer: pl.Trainer) -> None:
        """Hide the events the interrupted run wrote after the checkpoint's step (TensorBoard's
        ``purge_step``): the resumed run writes those steps again."""
        for sink in self._tensorboard_sinks(trainer).values():
            if not sink.purge_from(int(trainer.global_step) + 1):
                self._warn(f"{type(sink.writer).__name__} cannot hide the events written after "
                           f"the checkpoint; TensorBoard may show two values at those steps")

    def _resolve_history_path(self, trainer: pl.Trainer) -> Path | None:
        """This monitor's history file; with several monitors in one Trainer, each one after the
        first whose file would coincide with an earlier one's gets ``<stem>-<k>.jsonl`` (k: its
        1-based position among the monitors), so no two monitors write one file."""
        path = self._configured_history_path(trainer)
        if path is None:
            return None
        monitors = [cb for cb in trainer.callbacks if isinstance(cb, SpectralMonitor)]
        position = next((i for i, m in enumerate(monitors) if m is self), 0)
        earlier = {m._configured_history_path(trainer) for m in monitors[:position]}
        if path in earlier:
            path = path.with_name(f"{path.stem}-{position + 1}{path.suffix}")
            self._warn(f"another SpectralMonitor of this Trainer writes the same history file; "
                       f"this one (conv_modes={self.conv_modes}) writes {path}")
        if position == 1 and trainer.loggers:
            self._warn("several SpectralMonitors log to the same loggers: their tags coincide "
                       "for the layers and modes they both analyse (give them disjoint include/"
                       "exclude patterns)")
        return path

    def _configured_history_path(self, trainer: pl.Trainer) -> Path | None:
        if self.history_file is None:
            return None
        path = Path(self.history_file)
        if path.is_absolute():
            return path
        for logger in trainer.loggers:
            log_dir = getattr(logger, "log_dir", None)
            if log_dir:
                return Path(log_dir) / path
        return Path(trainer.default_root_dir) / path

    def _write_history(self, report: Report, alerts: list[Alert], entry: dict[str, Any]) -> None:
        if self._history_path is None:
            return
        common = {
            "epoch": entry["epoch"],
            "epochs_trained": entry["epochs_trained"],
            "step": entry["step"],
            "trigger": entry["trigger"],
        }
        fit = self._fit_used()
        rows: list[dict[str, Any]] = []
        for record in report:
            rows.append({
                "type": "layer",
                **common,
                "layer": record.name,
                "kind": record.kind,
                "mode": record.mode,
                "normalization": record.normalization,
                "fit": fit,
                "ww_compat": self.ww_compat,
                "shape": list(record.shape),
                "matrix_shape": record.matrix_shape,
                "input_size": record.input_size,
                "n_svals": None if record.svals is None else int(record.svals.numel()),
                "metrics": dict(record.metrics),
                "quality": record.quality,
                "reason": record.reason,
                "notes": dict(record.notes),
                "rank": self._owners.get(record.name, 0),
            })
        for mode, aggregates in entry["summary"].items():
            rows.append({
                "type": "summary", **common, "mode": mode, "normalization": self.normalization,
                "fit": fit, "ww_compat": self.ww_compat, "metrics": aggregates,
                "seconds": entry["seconds"],
            })
        if entry.get("training"):
            rows.append({"type": "training", **common, "metrics": entry["training"]})
        for alert in alerts:
            rows.append({
                **alert.to_dict(), "type": "alert", **common,
                "mode": alert.mode, "normalization": self.normalization, "fit": fit,
                "ww_compat": self.ww_compat,
                "ranks": list(self._alert_ranks.get(id(alert), (0,))),
            })
        HistoryFile(self._history_path).append(rows)

    def _conventions_markdown(self) -> str:
        primary = self.conv_modes[0]
        lines = ["**Spectral metrics of this run** (svd-callback `SpectralMonitor`)", ""]
        for mode in self.conv_modes:
            where = ("`spectral/<metric>/<layer>`" if mode == primary
                     else f"`spectral/<metric>.{mode}/<layer>`")
            how = tags.conventions(mode, self.normalization, self._fit_used(), self.ww_compat)
            primary_note = " (primary)" if mode == primary else ""
            lines.append(f"- **{mode}**{primary_note}: {where}; {_md(how)}")
        lines += [
            "",
            f"- metric groups: {', '.join(self.metric_groups)} "
            f"({_md(', '.join(self.logged_metrics))})",
            "- aggregates: `spectral_summary/<metric>_mean|_median[.<mode>]` over analysed "
            "layers; histograms `spectra/<mode>/<layer>` hold raw singular values",
            f"- schedule: {self._schedule_text()}; step = trainer.global_step",
            f"- history file: `{self._history_path or 'disabled'}`",
        ]
        if self.class_config is not None:
            lines.append(f"- class statistics `classes/<stat>/<layer>`: "
                         f"{_md(self._class_conventions())}")
        return "\n".join(lines)

    def _schedule_text(self) -> str:
        parts = []
        if self.log_init:
            parts.append("initial weights at step 0")
        if self.every_n_epochs:
            parts.append(f"every {self.every_n_epochs} epoch(s) at {self.on}")
        if self.every_n_steps:
            parts.append(f"every {self.every_n_steps} steps")
        return ", ".join(parts) or "never"

    # ------------------------------------------------------------------ warnings
    def _warn_skipped(self, report: Report) -> None:
        for record in report.skipped():
            key = f"skip:{record.name}:{record.mode}:{record.reason}"
            if key in self._warned:
                continue
            self._warned.add(key)
            rank_zero_warn(
                f"SpectralMonitor: layer {record.name!r} [{record.mode}] not analysed: "
                f"{record.reason}"
            )

    def _warn(self, message: str) -> None:
        rank_zero_warn(f"SpectralMonitor: {message}; training continues.")

    def _guarded(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``; an exception becomes a warning naming ``what`` and the error."""
        try:
            return fn(*args)
        except Exception as error:  # noqa: BLE001 - logging must never crash training
            self._warn(f"{what} failed: {type(error).__name__}: {error}")
            return None


# ---------------------------------------------------------------------- helpers
def _has_uninitialised_lazy(model: torch.nn.Module) -> bool:
    """Whether a lazy module (``LazyLinear``, ``LazyConv2d``...) still waits for its first
    forward to create its parameters."""
    return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()
               for m in model.modules())


def _is_model_level(tag: str) -> bool:
    """A model-level value (an aggregate or the alert count), as opposed to a per-layer one."""
    return tag.startswith(MODEL_LEVEL_PREFIXES) or tag == tags.ALERT_COUNT_TAG


def _log_to_logger(logger: Any, metrics: dict[str, float], step: int) -> None:
    logger.log_metrics(metrics, step)
    logger.save()


def _alerts_markdown(alerts: Sequence[Alert], where: Callable[[Alert], str]) -> str:
    """One bullet per alert: severity, then the alert's message (it names rule, layer, mode)
    and ``where(alert)`` (the ranks that raised it, when not all did)."""
    return "\n".join(f"- **{alert.severity}** {_md(alert.message + where(alert))}"
                     for alert in alerts)


def _md(text: str) -> str:
    """``text`` with markdown's emphasis and table characters escaped."""
    for char in ("\\", "*", "_", "|", "`"):
        text = text.replace(char, "\\" + char)
    return text


def _rows_up_to(path: str, step: int) -> list[dict[str, Any]] | None:
    """Rows of the history at ``path`` with step <= ``step`` (None if the file is missing)."""
    if not Path(path).exists():
        return None
    return [row for row in read_history(path) if int(row.get("step", 0)) <= step]


def _rewrite(history: HistoryFile, rows: list[dict[str, Any]]) -> None:
    """Replace the file's content with ``rows`` atomically."""
    tmp = HistoryFile(history.path.with_name(history.path.name + ".tmp"))
    if tmp.path.exists():
        tmp.path.unlink()
    tmp.append(rows)
    tmp.path.replace(history.path)


def _validation_loader(trainer: pl.Trainer) -> Any:
    """The (first) validation dataloader as its source gives it (datamodule, module hook or the
    loader passed to ``fit``), without Lightning's distributed sampler; None without one."""
    loader = None
    source = getattr(getattr(trainer.fit_loop.epoch_loop, "val_loop", None), "_data_source", None)
    try:
        if source is not None and source.instance is not None and source.is_defined():
            with isolate_rng():
                loader = source.dataloader()
    except Exception:  # noqa: BLE001 - fall back to the loaders Lightning already built
        loader = None
    if loader is None:
        loader = trainer.val_dataloaders
    if isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    elif isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    return loader


def _probe_state(probe: ProbeSet, source: str) -> dict[str, Any]:
    return {"source": source, "indices": probe.indices.tolist(), "labels": probe.labels.tolist()}


def _tensor_or_dict_forward(model: torch.nn.Module, inputs: Any, key: str) -> Any:
    """``model(inputs)``; a model that rejects them (its forward reads a dict batch) gets
    ``model({key: inputs})``."""
    try:
        return model(inputs)
    except Exception:  # noqa: BLE001 - the dict form is tried next; its error is the one raised
        return model({key: inputs})


class _KeyRecorder:
    """Iterates ``loader`` and remembers the input key of its dict batches (None otherwise)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.key: str | None = None

    def __iter__(self) -> Any:
        for batch in self.loader:
            if isinstance(batch, Mapping):
                self.key = _input_key(batch)
            yield batch


def _first_training_input(trainer: pl.Trainer) -> tuple[Any, str | None]:
    """The first element (inputs) of a one-sample batch from the training data, and its key
    when the batch is a dict.

    Read through the dataset (``dataset[0]`` and the loader's ``collate_fn``) inside
    ``isolate_rng`` so that random augmentations or samplers leave the global generators as
    they were.
    """
    loader = trainer.train_dataloader
    if isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    elif isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    if loader is None:
        return None, None
    with isolate_rng():
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__getitem__"):
            collate = getattr(loader, "collate_fn", None)
            sample = dataset[0]
            batch = collate([sample]) if collate is not None else sample
        else:
            batch = next(iter(loader))
    if isinstance(batch, Mapping):
        key = _input_key(batch)
        return (batch[key] if key is not None else None), key
    if isinstance(batch, (list, tuple)):
        return (batch[0] if batch else None), None
    return batch, None


def _input_key(batch: Mapping[str, Any]) -> str | None:
    """The key of the inputs in a dict batch: the first of the usual names, else the first."""
    for key in ("x", "input", "inputs", "image", "images", "pixel_values"):
        if key in batch:
            return key
    return next(iter(batch), None)


def _check_count(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    return value or None


def _check_modes(conv_modes: str | Sequence[str]) -> tuple[str, ...]:
    modes = (conv_modes,) if isinstance(conv_modes, str) else tuple(conv_modes)
    if not modes:
        raise ValueError("conv_modes must name at least one mode, got an empty sequence")
    for mode in modes:
        if mode not in CONV_MODES:
            raise ValueError(f"conv_modes must be among {CONV_MODES}, got {mode!r}")
    return tuple(dict.fromkeys(modes))


def _check_patterns(name: str, patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{name} must hold non-empty glob patterns, got {item!r}")
    return items


def _check_groups(metrics: str | Sequence[str]) -> tuple[str, ...]:
    groups = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if "all" in groups:
        return tuple(tags.METRIC_GROUPS)
    if not groups:
        raise ValueError("metrics must name at least one metric group, got an empty sequence")
    for group in groups:
        if group not in tags.METRIC_GROUPS:
            raise ValueError(
                f"metrics must be among {tuple(tags.METRIC_GROUPS)} or 'all', got {group!r}"
            )
    return tuple(dict.fromkeys(groups))


def _check_input_size(input_size: int | Sequence[int] | None) -> int | tuple[int, ...] | None:
    if input_size is None:
        return None
    values = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"input_size must be positive integer(s), got {input_size!r}")
    return input_size if isinstance(input_size, int) else values


def _check_figure_layers(figure_layers: int | Sequence[str]) -> int | tuple[str, ...]:
    if isinstance(figure_layers, bool):
        raise ValueError(f"figure_layers must be a count or layer names, got {figure_layers!r}")
    if isinstance(figure_layers, int):
        if figure_layers < 0:
            raise ValueError(f"figure_layers must be >= 0, got {figure_layers!r}")
        return figure_layers
    names = (figure_layers,) if isinstance(figure_layers, str) else tuple(figure_layers)
    if any(not isinstance(n, str) for n in names):
        raise ValueError(f"figure_layers must be a count or layer names, got {figure_layers!r}")
    return names
