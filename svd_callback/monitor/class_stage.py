"""The class-analysis hand-off of the callback: the fixed probe (chosen once, checkpointed by
position), the tracker of the class statistics across analyses, and one class analysis per
spectral analysis, computed on rank 0 and broadcast (on a sharded model: every rank runs its
slice of the probe forward pass, see :mod:`svd_callback.classes.sharded`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng

from svd_callback.classes.analysis import analyze_classes
from svd_callback.classes.config import ClassAnalysisConfig
from svd_callback.classes.probe import ProbeError, ProbeSet, probe_at_positions, probe_from_loader
from svd_callback.classes.report import ClassReport, ClassTracker
from svd_callback.classes.sharded import ProbeSplit
from svd_callback.monitor.guard import Guard
from svd_callback.monitor.inputs import (
    Forward,
    KeyRecorder,
    forward_for,
    has_uninitialised_lazy,
)
from svd_callback.monitor.trainer_access import validation_loader

__all__ = ["ClassStage"]

Metrics = dict[str, dict[str, float]]


class ClassStage:
    """Probe, tracker and the per-analysis class statistics (``config=None``: off).

    Args:
        config: the class-analysis options, or None (no class analysis).
        probe: a fixed probe given by the user, used instead of the validation data.
        guard: the callback's guard (warnings, warn-once).
        forward_fn: the user's forward for dict batches, see ``SpectralMonitor``.
    """

    def __init__(
        self,
        config: ClassAnalysisConfig | None,
        probe: ProbeSet | None,
        guard: Guard,
        forward_fn: Forward | None = None,
    ) -> None:
        self.config = config
        self.user_probe = probe
        self.guard = guard
        self.forward_fn = forward_fn
        self.reset()

    @staticmethod
    def options(
        class_analysis: bool | ClassAnalysisConfig | Mapping[str, Any], probe: ProbeSet | None
    ) -> ClassAnalysisConfig | None:
        """The class-analysis config of the callback's arguments (a probe turns it on).

        Raises:
            ValueError: on a probe that is not a :class:`ProbeSet` or invalid options.
        """
        if probe is not None and not isinstance(probe, ProbeSet):
            raise ValueError(f"class_probe must be a ProbeSet or None, got {probe!r}")
        config = ClassAnalysisConfig.coerce(class_analysis)
        if config is None and probe is not None:
            config = ClassAnalysisConfig()
        return config

    def reset(self) -> None:
        """Forget the probe and the tracked statistics (a new run)."""
        self.probe: ProbeSet | None = None
        self.probe_state: dict[str, Any] | None = None
        self.probe_key: str | None = None
        self.tracker = ClassTracker()

    @property
    def enabled(self) -> bool:
        return self.config is not None

    # ------------------------------------------------------------------ probe
    def prepare(self, trainer: Any) -> None:
        """Choose the probe (rank 0): the user's, the checkpoint's positions in the validation
        data, or a new class-stratified choice from it. Without usable data the class analysis
        is switched off for this fit with one warning."""
        if self.config is None or self.probe is not None:
            return
        if self.user_probe is not None:
            self.probe = self.user_probe
            self.probe_state = _probe_state(self.user_probe, "class_probe")
            return
        loader = validation_loader(trainer)
        if loader is None:
            self._off("there is no validation dataloader to draw the probe from (pass "
                      "class_probe=)")
            return
        recorded = self.probe_state
        probe = None
        loader = KeyRecorder(loader)
        with isolate_rng():  # iterating a loader draws its base seed from the global RNG
            if recorded is not None and recorded.get("source") == "val_dataloader":
                try:
                    probe = probe_at_positions(loader, recorded["indices"], recorded["labels"])
                except ProbeError as error:
                    self.guard.warn(f"the recorded class probe could not be restored ({error}); "
                                    f"a new one is chosen, the class statistics start afresh")
                    self.tracker = ClassTracker()
            if probe is None:
                try:
                    probe = probe_from_loader(loader, self.config.probe_size, self.config.seed,
                                              self.config.probe_batches)
                except ProbeError as error:
                    self._off(f"no class probe from the validation data: {error}")
                    return
        self.probe = probe
        self.probe_key = loader.key
        self.probe_state = _probe_state(probe, "val_dataloader")
        classes = int(torch.unique(probe.labels).numel())
        rank_zero_info(f"SpectralMonitor: class analysis on a fixed probe of {len(probe)} "
                       f"validation images ({classes} classes).")

    def _off(self, reason: str) -> None:
        if self.guard.first("classes-off"):
            self.guard.warn(f"class analysis disabled: {reason}")

    # ------------------------------------------------------------------ analysis
    def run(
        self,
        module: torch.nn.Module,
        layers: Sequence[str],
        is_zero: bool = True,
        broadcast: Callable[[Any], Any] | None = None,
        split: ProbeSplit | None = None,
    ) -> tuple[ClassReport | None, Metrics]:
        """The class report (rank 0) and the class statistics per layer (every rank).

        Without ``split``: computed on rank 0 alone (one forward pass of the unwrapped module),
        then ``broadcast``. With ``split`` (a sharded model, whose forward needs every rank):
        rank 0's probe is broadcast, every rank runs its slice of the probe forward pass and
        the slices are merged (:mod:`svd_callback.classes.sharded`), then rank 0's statistics
        are broadcast. Collectives inside whenever ``broadcast`` is given: every rank calls this.
        """
        if self.config is None:
            return None, {}
        if split is not None and broadcast is not None:
            self.probe, self.probe_key = broadcast((self.probe, self.probe_key))
        report = None
        if (is_zero or split is not None) and self.probe is not None:
            if has_uninitialised_lazy(module):
                self.guard.note_once("lazy-classes", "the model has lazy modules not "
                                     "materialised yet; the class analysis starts after its "
                                     "first forward")
            else:
                report = self.guard.call("the class analysis", self._analyse, module, layers,
                                         split)
        metrics = {} if report is None else report.record_metrics()
        if broadcast is not None:
            metrics = broadcast(metrics)
        return (report if is_zero else None), metrics

    def _analyse(
        self, module: torch.nn.Module, layers: Sequence[str], split: ProbeSplit | None = None
    ) -> ClassReport:
        report = analyze_classes(module, self.probe, self.config, layers=list(layers),
                                 tracker=self.tracker,
                                 forward=forward_for(self.probe_key, self.forward_fn),
                                 split=split)
        for key, reason in report.reasons.items():
            self.guard.warn_once(f"classes:{key}:{reason}", f"class analysis, {key}: {reason}")
        return report

    # ------------------------------------------------------------------ text
    def conventions(self) -> str:
        """How the class statistics were made (TensorBoard descriptions, conventions text)."""
        config = self.config
        if config is None:
            return ""
        size = len(self.probe) if self.probe is not None else config.probe_size
        if config.edge_rule == "influential":
            edges = (f"all unfold SVD-neurons per layer; hyperedges: DeepDataProfiler-influential "
                     f"(threshold {config.influence_threshold}) in >= q={config.q} of the "
                     f"class's images")
        else:
            rule = f"tau={config.tau}" if config.m is None else f"m={config.m}"
            edges = (f"mean_share: top-{config.top_k} unfold SVD-neurons per layer, hyperedges "
                     f"{rule}")
        return (f"fixed class-stratified probe of {size} images, eval mode; {edges}; features: "
                f"input of the penultimate layer, mass {config.feature_mass}")

    def history_fields(self) -> dict[str, Any]:
        """The settings written on every ``class`` row of the history file."""
        config = self.config
        return {
            "probe_size": len(self.probe) if self.probe is not None else 0,
            "top_k": config.top_k if config else None,
            "tau": config.tau if config else None,
            "m": config.m if config else None,
            "edge_rule": config.edge_rule if config else None,
            "q": config.q if config else None,
            "influence_threshold": config.influence_threshold if config else None,
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "probe": None if self.probe_state is None else dict(self.probe_state),
            "tracker": self.tracker.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probe_state = state["probe"]
        self.probe = None  # rebuilt from the recorded positions at train start
        self.tracker.load_state_dict(state["tracker"])


def _probe_state(probe: ProbeSet, source: str) -> dict[str, Any]:
    return {"source": source, "indices": probe.indices.tolist(), "labels": probe.labels.tolist()}
