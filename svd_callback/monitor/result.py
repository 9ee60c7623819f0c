"""The frozen, typed record of one analysis, passed from the runner to the publisher."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from svd_callback.alerts import Alert, Condition
from svd_callback.classes.report import ClassReport
from svd_callback.report import Report

__all__ = ["AnalysisResult"]


@dataclass(frozen=True)
class AnalysisResult:
    """One analysis of the model, on every rank the same after the gather.

    Attributes:
        step: ``trainer.global_step`` when the weights were read.
        epoch: ``floor(epochs_trained)``.
        epochs_trained: training epochs done (0 at initialisation, fractional between epoch
            ends, see :func:`svd_callback.schedule.epochs_trained`).
        trigger: ``"fit_start"``, ``"train_step"``, ``"train_epoch_end"`` or
            ``"validation_epoch_end"``.
        seconds: wall time of the analysis (spectra, gather, class analysis, aggregates, alerts).
        report: one record per (layer, mode), every rank's share gathered.
        summary: the aggregates per mode (:func:`svd_callback.analysis.summarize`).
        alerts: the alerts raised on any rank, merged.
        alert_ranks: for each alert, the ranks that raised it.
        active: the alert conditions of severity warning or stop in force after this analysis
            (:meth:`~svd_callback.alerts.AlertEngine.active`), the union over the ranks.
        world_size: number of processes.
        owners: layer name -> the rank that analysed it.
        training: the trainer's own scalars (losses, accuracies) the rules saw.
        class_report: the class analysis (rank 0; None elsewhere or when off).
        class_metrics: the class statistics per layer (every rank, broadcast from rank 0).
        alert_totals: alerts raised so far in this run by rule, this analysis's included (every
            rank's, merged): every configured rule (0 until it fires), then any other name.
        in_force: the alerts behind the conditions in force, each narrowed to the layers still
            in force (:meth:`~svd_callback.alerts.AlertEngine.in_force`, every rank's, merged):
            what the ``alerts`` text states first.
        in_force_ranks: for each of ``in_force``, the ranks where it is in force.
    """

    step: int
    epoch: int
    epochs_trained: float
    trigger: str
    seconds: float
    report: Report
    summary: Mapping[str, Mapping[str, float]]
    alerts: tuple[Alert, ...] = ()
    alert_ranks: tuple[tuple[int, ...], ...] = ()
    active: tuple[Condition, ...] = ()
    world_size: int = 1
    owners: Mapping[str, int] = field(default_factory=dict)
    training: Mapping[str, float] = field(default_factory=dict)
    class_report: ClassReport | None = None
    class_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    alert_totals: Mapping[str, int] = field(default_factory=dict)
    in_force: tuple[Alert, ...] = ()
    in_force_ranks: tuple[tuple[int, ...], ...] = ()

    def ranks_of(self, alert: Alert) -> tuple[int, ...]:
        """The ranks that raised ``alert``, one of :attr:`alerts` or :attr:`in_force` (``(0,)``
        when unknown)."""
        pairs = [*zip(self.alerts, self.alert_ranks, strict=False),
                 *zip(self.in_force, self.in_force_ranks, strict=False)]
        for candidate, ranks in pairs:
            if candidate is alert:
                return ranks
        return (0,)

    def raised_on(self, alert: Alert) -> str:
        """`` (rank r)`` for an alert raised on some ranks only of a multi-process run."""
        known = any(candidate is alert for candidate in (*self.alerts, *self.in_force))
        ranks = self.ranks_of(alert)
        if not known or self.world_size <= 1 or len(ranks) == self.world_size:
            return ""
        return f" (rank {', '.join(map(str, ranks))})"

    def stop_reasons(self) -> str:
        """The messages of the ``stop`` alerts, with the ranks that raised them."""
        reasons = "; ".join(a.message + self.raised_on(a) for a in self.alerts
                            if a.severity == "stop")
        return reasons or "stop alert"

    def entry(self) -> dict[str, Any]:
        """The model-level entry kept in the callback's history and checkpointed state."""
        return {
            "epoch": self.epoch,
            "epochs_trained": self.epochs_trained,
            "step": self.step,
            "trigger": self.trigger,
            "seconds": self.seconds,
            "summary": {m: dict(v) for m, v in self.summary.items()},
            "training": dict(self.training),
            "alerts": len(self.alerts),
        }
