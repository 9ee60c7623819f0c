"""One analysis of the model: what the callback computes, returned as an
:class:`~svd_callback.monitor.result.AnalysisResult`.

Path of one analysis (every rank): the conv input sizes are recorded once (``operator`` mode);
the layers are split over the ranks by cost (:func:`svd_callback.distributed.split_work`); each
rank runs :func:`svd_callback.analysis.analyze` on its share and the reports are gathered; the
class statistics are computed on rank 0 and broadcast. On a sharded (FSDP2) model reading a full
weight is a collective: the layers are split by parameter
(:func:`svd_callback.distributed.split_units`), every rank takes part in the gather of every
analysed weight, each delivered to the rank that analyses it
(:func:`svd_callback.sharding.gather_shares`), then each rank analyses its share from its copies
with no collective in between, and the reports are gathered (a model whose weights live on a
mesh smaller than the world is analysed whole on every rank, one gathered weight at a time); the
class analysis runs on every rank, each on its slice of the probe (its forward needs every rank,
:mod:`svd_callback.classes.sharded`), and rank 0's statistics are broadcast; the aggregates
(:func:`svd_callback.analysis.summarize`) and the alert rules run on every rank, and the alerts
are gathered with the ranks that raised them. Nothing here needs a ``Trainer``: the callback
passes the step, the epochs trained and the rank numbers.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from svd_callback.alerts import Alert, AlertEngine, Condition
from svd_callback.alerts.base import rule_name
from svd_callback.analysis import add_motion, analyze, summarize
from svd_callback.classes.sharded import ProbeSplit
from svd_callback.config import AnalysisConfig
from svd_callback.distributed import gather_reports, is_distributed, split_units, split_work
from svd_callback.layers import estimate_cost, example_input_for, find_layers, record_input_sizes
from svd_callback.monitor import console
from svd_callback.monitor.class_stage import ClassStage
from svd_callback.monitor.gather import gather_alerts, gather_conditions
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.inputs import Forward, forward_for, has_uninitialised_lazy
from svd_callback.monitor.result import AnalysisResult
from svd_callback.motion import DEFAULT_SKETCH_SIZE, MotionTracker
from svd_callback.report import LayerReport, Report
from svd_callback.sharding import divisible, gather_shares, gathered_weights, is_sharded
from svd_callback.sinks.tags import OWN_TAG_PREFIXES

__all__ = ["AnalysisRunner", "training_scalars"]

InputSource = Callable[[], tuple[Any, str | None]]
"""Returns the inputs of one training sample and their key in a dict batch (or None)."""


def training_scalars(callback_metrics: Mapping[str, Any]) -> dict[str, float]:
    """The trainer's own logged scalars (``val_loss``, ``train_loss``, ...; not the callback's
    tags, :data:`~svd_callback.sinks.tags.OWN_TAG_PREFIXES`), for rules such as
    :class:`~svd_callback.alerts.GeneralizationGap`."""
    out: dict[str, float] = {}
    try:
        for key, value in dict(callback_metrics).items():
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


class AnalysisRunner:
    """Runs one analysis and keeps what later analyses need: the conv input sizes, the trainer's
    scalars, the alert engine's state and the alerts counted so far, the class stage's probe and
    tracker, the motion sketches (:meth:`state_dict`, :meth:`reset`).

    Args:
        config: what is computed.
        alert_engine: the rules, run after each analysis.
        classes: the class-analysis stage (its config may be None: off).
        guard: the callback's guard.
        keep_svals: keep each record's singular values (histograms, figures).
        forward_fn: the user's forward for the input-size probe.
        motion_sketch: sketch columns of the ``"motion"`` group's
            :class:`~svd_callback.motion.MotionTracker` (when that group is selected).
    """

    def __init__(
        self,
        config: AnalysisConfig,
        alert_engine: AlertEngine,
        classes: ClassStage,
        guard: Guard,
        *,
        keep_svals: bool = True,
        forward_fn: Forward | None = None,
        motion_sketch: int = DEFAULT_SKETCH_SIZE,
    ) -> None:
        self.config = config
        self.alert_engine = alert_engine
        self.classes = classes
        self.guard = guard
        self.keep_svals = keep_svals
        self.forward_fn = forward_fn
        self.motion = (MotionTracker(motion_sketch, config.generator_seed)
                       if "motion" in config.metrics else None)
        self._initial_engine = alert_engine.state_dict()
        self.reset()
        self.start_fit()

    # ------------------------------------------------------------------ state
    input_sizes = property(lambda self: dict(self._input_sizes),
                           doc="The recorded conv input sizes (``operator`` mode), by layer.")

    def reset(self) -> None:
        """Forget the run (a new run): input sizes, trainer scalars, the alert engine's history
        and rule states with the alerts counted so far, the class probe and tracker, the
        motion sketches."""
        self._input_sizes: dict[str, tuple[int, ...]] = {}
        self._training: dict[str, float] = {}
        self._alert_totals: Counter[str] = Counter()
        self.alert_engine.load_state_dict(self._initial_engine)
        self.classes.reset()
        if self.motion is not None:
            self.motion.reset()

    def start_fit(self) -> None:
        """At the start of each ``fit``: the input sizes are probed again if none were
        recorded."""
        self._sizes_tried = False

    def state_dict(self) -> dict[str, Any]:
        """What later analyses need, plain types and CPU tensors (checkpointed)."""
        return {
            "input_sizes": {k: list(v) for k, v in self._input_sizes.items()},
            "training": dict(self._training),
            "alert_engine": self.alert_engine.state_dict(),
            "alert_totals": dict(self._alert_totals),
            "classes": self.classes.state_dict(),
            "motion": None if self.motion is None else self.motion.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Without ``alert_totals`` (a state written before
        they were kept) the alerts the engine kept are counted."""
        self._input_sizes = {k: tuple(v) for k, v in state["input_sizes"].items()}
        self._training = {str(k): float(v) for k, v in (state.get("training") or {}).items()}
        self.alert_engine.load_state_dict(state["alert_engine"])
        totals = state.get("alert_totals")
        self._alert_totals = Counter(
            {str(k): int(v) for k, v in totals.items()} if totals is not None
            else (a.rule for a in self.alert_engine.alerts_so_far))
        for part, key in ((self.classes, "classes"), (self.motion, "motion")):
            if state.get(key) is not None and part is not None:
                part.load_state_dict(state[key])

    # ------------------------------------------------------------------ input sizes
    def maybe_record_input_sizes(
        self, module: torch.nn.Module, training_input: InputSource | None = None
    ) -> None:
        """Record the conv input sizes once (``operator`` mode), never before the model's own
        first forward has materialised its lazy modules: a probe pass would initialise them
        from a different random state than the training would."""
        if not self.config.needs_input_size or self._input_sizes or self._sizes_tried:
            return
        if has_uninitialised_lazy(module):
            self.guard.note_once("lazy-sizes", "the model has lazy modules not materialised "
                                 "yet; the conv input sizes (operator mode) are recorded after "
                                 "its first forward")
            return
        self._sizes_tried = True
        try:
            example, key, source = self._example(module, training_input)
            specs, _ = find_layers(module, self.config.include, self.config.exclude,
                                   self.config.embeddings)
            with torch.no_grad():
                self._input_sizes = record_input_sizes(module, example, specs,
                                                       forward_for(key, self.forward_fn))
            rank_zero_info(f"SpectralMonitor: recorded the input sizes of "
                           f"{len(self._input_sizes)} conv layers from {source}.")
        except Exception as error:  # noqa: BLE001 - operator mode then skips convs with a reason
            self.guard.warn(f"could not record conv input sizes ({type(error).__name__}: "
                            f"{error}); operator mode will skip conv layers")

    def _example(
        self, module: torch.nn.Module, training_input: InputSource | None
    ) -> tuple[Any, str | None, str]:
        size = self.config.input_size
        if size is not None:
            return example_input_for(module, size), None, f"input_size={size}"
        if getattr(module, "example_input_array", None) is not None:
            return module.example_input_array, None, "example_input_array"
        example, key = training_input() if training_input is not None else (None, None)
        if example is None:
            raise ValueError("no input to probe with: set example_input_array on the "
                             "LightningModule or pass input_size= to SpectralMonitor")
        return example, key, "the first training sample"

    # ------------------------------------------------------------------ analysis
    def run(
        self,
        module: torch.nn.Module,
        *,
        step: int,
        epochs_trained: float,
        trigger: str,
        training: Mapping[str, float] | None = None,
        world: int = 1,
        rank: int = 0,
        broadcast: Callable[[Any], Any] | None = None,
    ) -> AnalysisResult:
        """One analysis on this rank (collective calls inside when ``world > 1``: every rank
        calls it at the same point). ``training``: the trainer's scalars now; those logged
        before a checkpoint and not since are kept from earlier analyses."""
        started = time.perf_counter()
        owners: dict[str, int] = {}
        sharded = is_distributed(world) and is_sharded(module)
        local, order, whole = self._local_report(module, world, rank, owners, sharded)
        report = local if whole else gather_reports(local, world, order,
                                                    self.config.conv_mode)  # collective
        self._add_motion(module, report)  # collective on a sharded model
        class_report, class_metrics = self.classes.run(
            module, self._class_layers(module), rank == 0,
            broadcast if is_distributed(world) else None,
            ProbeSplit(rank, world) if sharded else None,
        )
        self._training = {**self._training, **(training or {})}
        training = dict(self._training)
        epoch = int(math.floor(epochs_trained))
        summary: dict[str, dict[str, float]] = {}
        alerts: list[Alert] = []
        try:
            summary = summarize(report)
            alerts = self.alert_engine.update(epoch, step, report, summary, training=training,
                                              classes=class_metrics)
        except Exception as error:  # noqa: BLE001 - never crash training
            self.guard.warn(f"computing aggregates and alerts failed: "
                            f"{type(error).__name__}: {error}")
        merged = self._gather_alerts(alerts, world, rank)  # collective
        active = self._gather_active(world, rank)  # collective
        in_force = self._gather_in_force(world, rank)  # collective
        self._alert_totals.update(alert.rule for alert, _ in merged)
        return AnalysisResult(
            step=int(step), epoch=epoch, epochs_trained=float(epochs_trained), trigger=trigger,
            seconds=time.perf_counter() - started, report=report, summary=summary,
            alerts=tuple(a for a, _ in merged), alert_ranks=tuple(r for _, r in merged),
            active=tuple(active),
            world_size=int(world), owners=owners, training=training,
            class_report=class_report, class_metrics=class_metrics,
            alert_totals=self._totals(), in_force=tuple(a for a, _ in in_force),
            in_force_ranks=tuple(r for _, r in in_force),
        )

    def _totals(self) -> dict[str, int]:
        """Alerts raised so far in this run by rule: every rule of the engine (0 until it
        fires), then any other name that raised, sorted."""
        names = [rule_name(r) for r in self.alert_engine.rules]
        return {name: self._alert_totals.get(name, 0)
                for name in dict.fromkeys([*names, *sorted(self._alert_totals)])}

    def _add_motion(self, module: torch.nn.Module, report: Report) -> None:
        """Add the ``"motion"`` metrics of every analysed layer to its records (every mode).

        Every rank sketches every layer (a matrix product, no decomposition), so each rank keeps
        every layer's sketches and a checkpoint written by rank 0 holds them all; on a sharded
        model each weight is gathered in the same order on every rank (a collective)."""
        if self.motion is None:
            return
        try:
            specs, _ = find_layers(module, self.config.include, self.config.exclude,
                                   self.config.embeddings)
            add_motion(report, specs, self.motion)
        except Exception as error:  # noqa: BLE001 - never crash training
            self.guard.warn(f"measuring the weights' motion failed: {type(error).__name__}: "
                            f"{error}")

    def _class_layers(self, module: torch.nn.Module) -> list[str]:
        """The monitored layers whose weight is a module's own (the class probe's layers)."""
        if not self.classes.enabled:
            return []
        specs, _ = find_layers(module, self.config.include, self.config.exclude,
                               self.config.embeddings)
        return [s.name for s in specs if s.is_module_weight]

    def _local_report(
        self, module: torch.nn.Module, world: int, rank: int, owners: dict[str, int],
        sharded: bool = False,
    ) -> tuple[Report, list[str], bool]:
        """This rank's share of the layers, analysed; errors become records with a reason.
        Returns the report, every layer name (the gather order) and whether the report is
        already whole (a sharded model whose weights cannot be divided: every layer here)."""
        config = self.config
        names: list[str] = []
        share: list[str] | None = None
        whole = sharded
        try:
            specs, skipped = find_layers(module, config.include, config.exclude,
                                          config.embeddings)
            names = [s.name for s in specs] + [s.name for s in skipped]
            if sharded:
                whole = not divisible((s.matrix.stored(s.module) for s in specs), world)
            if is_distributed(world) and not whole:
                for spec in specs:
                    if spec.name in self._input_sizes:
                        spec.input_size = tuple(self._input_sizes[spec.name])
                costs = {s.name: sum(estimate_cost(s, m) for m in config.conv_mode)
                         for s in specs}
                costs.update({s.name: 0.0 for s in skipped})
                units = {s.name: (id(s.module), s.matrix.param) for s in specs}
                shares = split_units(costs, units, world) if sharded else split_work(costs,
                                                                                     world)
                owners.update({n: r for r, part in enumerate(shares) for n in part})
                share = shares[rank]
            if sharded and not whole:
                copies = gather_shares(specs, owners, rank)  # collective, no SVD in between
                with torch.no_grad(), gathered_weights(copies):
                    report = self._analyze(module, share, probe=False)
                return report, names, whole
            with torch.no_grad():
                report = self._analyze(module, share)
            return report, names, whole
        except Exception as error:  # noqa: BLE001 - never crash training
            reason = f"analysis failed on rank {rank}: {type(error).__name__}: {error}"
            console.warn(f"SpectralMonitor: {reason}")
            failed = names if share is None else share
            report = Report(
                LayerReport(name, "unknown", mode, config.normalization, reason=reason,
                            reason_code="analysis_failed")
                for mode in config.conv_mode
                for name in failed
            )
            return report, names, whole

    def _analyze(self, module: torch.nn.Module, share: list[str] | None,
                 probe: bool = True) -> Report:
        """:func:`~svd_callback.analysis.analyze` with this runner's configuration; without
        ``probe``, no forward pass for missing conv input sizes (on a divided sharded model a
        forward is a collective that the other ranks, busy with their own share, never join)."""
        config = self.config if probe else replace(self.config, input_size=None)
        return analyze(module, config=config, input_sizes=dict(self._input_sizes) or None,
                       layer_names=share, keep_svals=self.keep_svals)

    def _gather_alerts(
        self, alerts: list[Alert], world: int, rank: int
    ) -> list[tuple[Alert, tuple[int, ...]]]:
        """The alerts of every rank (merged), each with the ranks that raised it."""
        try:
            return gather_alerts(alerts, world, rank)
        except Exception as error:  # noqa: BLE001 - never crash training
            self.guard.warn(f"gathering the alerts of every rank failed: "
                            f"{type(error).__name__}: {error}; rank {rank} records its own")
            return [(alert, (rank,)) for alert in alerts]

    def _gather_in_force(
        self, world: int, rank: int
    ) -> list[tuple[Alert, tuple[int, ...]]]:
        """The alerts behind the conditions in force on any rank, on every rank, each with the
        ranks where it is in force."""
        local = self._read_engine(self.alert_engine.in_force, "the alerts in force")
        return self._gather_alerts(local, world, rank)

    def _read_engine(self, read: Callable[[], list[Any]], what: str) -> list[Any]:
        """``read()`` of the alert engine; on failure a warning naming ``what`` and []."""
        try:
            return read()
        except Exception as error:  # noqa: BLE001 - never crash training
            self.guard.warn(f"reading {what} failed: {type(error).__name__}: {error}")
            return []

    def _gather_active(self, world: int, rank: int) -> list[Condition]:
        """The conditions in force on any rank, on every rank (``alerts/active``)."""
        local = self._read_engine(self.alert_engine.active, "the alert conditions in force")
        try:
            return gather_conditions(local, world)
        except Exception as error:  # noqa: BLE001 - never crash training
            self.guard.warn(f"gathering the alert conditions of every rank failed: "
                            f"{type(error).__name__}: {error}; rank {rank} reads its own")
            return local
