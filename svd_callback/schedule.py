"""When ``SpectralMonitor`` analyses the model: pure decisions, no Lightning import.

The callback holds one :class:`Schedule` and asks it at each hook, passing the trainer's
numbers (``global_step``, ``current_epoch``, ``sanity_checking``, whether it is fitting):

- ``on_train_start``: :meth:`Schedule.is_new_run` (the same callback object fitted again from
  scratch: the run state is reset), then :meth:`Schedule.due_at_start` (the initial weights);
- ``on_train_batch_end``: :meth:`Schedule.due_at_step`;
- ``on_train_epoch_end`` and ``on_validation_epoch_end``: :meth:`Schedule.due_at_epoch_end`;
- after each recorded analysis: :meth:`Schedule.record`.

One global step is never analysed twice (the step and the epoch schedules can meet at the last
batch of an epoch), the sanity check is never analysed, and the initial analysis is not repeated
when a run resumes from a checkpoint: :meth:`Schedule.state_dict` goes into the callback's
checkpointed state. ``setup()`` resolves an epoch hook left as None with
:func:`resolve_check_on`, from the trainer's validation settings
(:func:`svd_callback.monitor.trainer_access.validation_settings`):
``schedule.resolve(**validation_settings(trainer))``.
"""

from __future__ import annotations

import math
from typing import Any

from svd_callback.checks import check_bool, check_choice, check_count
from svd_callback.config import EPOCH_HOOKS, EpochHook, MonitorConfig

__all__ = ["Schedule", "epochs_trained", "resolve_check_on"]

FIT_START = "fit_start"
TRAIN_STEP = "train_step"
"""Trigger names of the initial and the step analyses (the epoch ones are :data:`EpochHook`)."""


def resolve_check_on(
    check_on: EpochHook | None,
    *,
    val_check_interval: float | int | None,
    check_val_every_n_epoch: int | None,
    validates: bool,
    time_based: bool = False,
) -> EpochHook:
    """The hook of the epoch schedule: ``check_on`` when given, otherwise chosen as Lightning's
    ``EarlyStopping`` chooses ``check_on_train_epoch_end`` in its ``setup()``.

    Why: the analysis writes its aggregates into ``trainer.callback_metrics`` for
    ``EarlyStopping`` and ``ModelCheckpoint`` to monitor. With Lightning's defaults (validation
    once at the end of every training epoch: ``val_check_interval=1.0``,
    ``check_val_every_n_epoch=1``) they check at the end of the training epoch, after the
    epoch's validation, so ``"train_epoch_end"`` is the latest point at which they see the
    current analysis and the validation metrics of the same weights. When validation runs
    several times per epoch (``val_check_interval < 1`` or an integer batch count), every k
    epochs (``check_val_every_n_epoch != 1``), by steps across epochs
    (``check_val_every_n_epoch=None``) or on a clock (``time_based``), they check at validation
    end instead, so the analysis follows ``"validation_epoch_end"``. Without validation (no
    ``validation_step``, no validation data, ``limit_val_batches=0``) the validation hook never
    runs in training, so the training-epoch hook is the only one that analyses.

    Args:
        check_on: the user's choice, returned as is unless None.
        val_check_interval: ``trainer.val_check_interval`` (fraction of an epoch as a float,
            a number of batches as an int; None where the trainer has none, on a clock).
        check_val_every_n_epoch: ``trainer.check_val_every_n_epoch``.
        validates: whether validation runs in training (``trainer.enable_validation``, which
            is known in ``setup()`` of a fit).
        time_based: validation on a clock (``val_check_interval`` given as a duration).

    Raises:
        ValueError: when ``check_on`` is not None and not an :data:`EpochHook`.
    """
    if check_on is not None:
        return check_choice("check_on", check_on, EPOCH_HOOKS)
    if not validates:
        return "train_epoch_end"
    once_per_epoch = (
        not time_based
        and isinstance(val_check_interval, float)
        and val_check_interval == 1.0
        and check_val_every_n_epoch == 1
    )
    return "train_epoch_end" if once_per_epoch else "validation_epoch_end"


def epochs_trained(
    trigger: str,
    epoch: int,
    batches_done: int | None,
    batches: float,
    epoch_finished: bool | None = None,
) -> float:
    """Training epochs done when the weights were read: 0 at initialisation, ``epoch + 1`` at
    the end of a training epoch that ran to its end, ``epoch + batches_done / batches`` in
    between and at the end of an epoch cut short (the fraction clipped to [0, 1]); ``epoch``
    when the batch count is unknown or infinite.

    Args:
        trigger: ``"fit_start"``, ``"train_step"`` or an :data:`EpochHook`.
        epoch: ``trainer.current_epoch``.
        batches_done: batches of this epoch done (``batch_idx + 1``), None if unknown.
        batches: ``trainer.num_training_batches``.
        epoch_finished: at ``"train_epoch_end"``, whether the epoch ran to its last batch
            (False: ``max_steps`` or a stop ended it early); None: assumed so.
    """
    if trigger == FIT_START:
        return 0.0
    if trigger == "train_epoch_end" and epoch_finished is not False:
        return float(epoch + 1)
    if batches_done is None or isinstance(batches, bool) or not isinstance(batches, int | float):
        return float(epoch)
    if not math.isfinite(batches) or batches <= 0:
        return float(epoch)
    return float(epoch) + min(max(batches_done, 0), batches) / batches


class Schedule:
    """The analysis schedule and the two numbers it remembers (analyses done, last step).

    Args:
        every_n_epochs: analyse at the end of every n-th epoch, counted from 1 (epochs
            ``n - 1, 2n - 1, ...`` with 0-based ``current_epoch``); None or 0: never.
        every_n_steps: analyse when ``global_step`` is a positive multiple of n; None or 0:
            never.
        check_on: the epoch schedule's hook (:data:`EpochHook`); None until :meth:`resolve`
            sets it in ``setup()``.
        log_init: analyse the initial weights at the start of a fresh run (global step 0).

    Raises:
        ValueError: on an invalid value, naming it.
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        check_on: EpochHook | None = None,
        log_init: bool = True,
    ) -> None:
        self.every_n_epochs = check_count("every_n_epochs", every_n_epochs) or None
        self.every_n_steps = check_count("every_n_steps", every_n_steps) or None
        self.check_on: EpochHook | None = check_choice("check_on", check_on, EPOCH_HOOKS,
                                                        none_ok=True)
        self.log_init = check_bool("log_init", log_init)
        self.analyses = 0
        self.last_step: int | None = None

    def __repr__(self) -> str:
        return (f"Schedule(every_n_epochs={self.every_n_epochs}, every_n_steps="
                f"{self.every_n_steps}, check_on={self.check_on!r}, log_init={self.log_init}; "
                f"analyses={self.analyses}, last_step={self.last_step})")

    @classmethod
    def from_config(cls, config: MonitorConfig) -> Schedule:
        """The schedule of a callback's configuration (state: nothing analysed yet)."""
        return cls(config.every_n_epochs, config.every_n_steps, config.check_on, config.log_init)

    # ------------------------------------------------------------------ settings
    def resolve(self, **trainer_settings: Any) -> EpochHook:
        """Fix the epoch hook if it was left as None (``setup()``); the keyword arguments are
        those of :func:`resolve_check_on`. Returns the hook."""
        self.check_on = resolve_check_on(self.check_on, **trainer_settings)
        return self.check_on

    # ------------------------------------------------------------------ decisions
    def is_new_run(self, global_step: int, resumed: bool) -> bool:
        """At train start: the object is fitted again from scratch (not resumed, step 0, with
        analyses recorded), so the caller resets its run state and calls :meth:`reset`."""
        return not resumed and global_step == 0 and self.analyses > 0

    def due_at_start(self, global_step: int) -> bool:
        """Analyse the initial weights: ``log_init``, nothing analysed yet, global step 0 (a run
        resumed from a checkpoint has analyses and a positive step)."""
        return self.log_init and self.analyses == 0 and global_step == 0

    def due_at_step(self, global_step: int) -> bool:
        """After a training batch: ``global_step`` a positive multiple of ``every_n_steps``,
        that step not analysed yet."""
        n = self.every_n_steps
        return bool(n) and global_step > 0 and global_step % n == 0 and not self.done_at(
            global_step
        )

    def due_at_epoch_end(
        self,
        hook: EpochHook,
        epoch: int,
        global_step: int,
        *,
        sanity_checking: bool = False,
        fitting: bool = True,
    ) -> bool:
        """At the end of a training or validation epoch: ``hook`` is the schedule's hook, the
        epoch (0-based ``current_epoch``) is the last of a block of ``every_n_epochs``, the
        trainer is fitting and not in its sanity check, and the step was not analysed yet.

        Raises:
            RuntimeError: when the hook was left as None and :meth:`resolve` not called.
        """
        if self.check_on is None:
            raise RuntimeError("Schedule.check_on is unresolved: call resolve() in setup()")
        n = self.every_n_epochs
        return (
            hook == self.check_on
            and fitting
            and not sanity_checking
            and bool(n)
            and (epoch + 1) % n == 0
            and not self.done_at(global_step)
        )

    def done_at(self, global_step: int) -> bool:
        """Whether ``global_step`` was the step of the last recorded analysis."""
        return self.analyses > 0 and self.last_step is not None and global_step == self.last_step

    # ------------------------------------------------------------------ state
    def record(self, global_step: int) -> None:
        """One analysis was recorded at ``global_step``."""
        self.analyses += 1
        self.last_step = int(global_step)

    def reset(self) -> None:
        """Forget the analyses of a previous run."""
        self.analyses = 0
        self.last_step = None

    def state_dict(self) -> dict[str, Any]:
        """``analyses`` and ``last_step``, for the callback's checkpointed state."""
        return {"analyses": self.analyses, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s numbers (the settings stay those of the constructor)."""
        self.analyses = int(state["analyses"])
        last = state["last_step"]
        self.last_step = None if last is None else int(last)
