"""What the callback reads of a Lightning ``Trainer`` beyond its public attributes, in one place.

Each function names the private attribute it relies on; ``tests/test_trainer_access.py`` holds
every one against the installed Lightning, so an upgrade that moves one fails there, not in a
user's training run. Every other read of a ``Trainer`` (``global_step``, ``current_epoch``,
``callback_metrics``, ``strategy.broadcast`` ...) is public API.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities.seed import isolate_rng

from svd_callback.monitor.inputs import first_loader
from svd_callback.schedule import epochs_trained

__all__ = ["epochs_trained_at", "suppress_hp_metric", "validation_loader", "validation_settings"]


def validation_settings(trainer: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`svd_callback.schedule.resolve_check_on` read from a
    ``Trainer`` in ``setup()`` of a fit (the dataloaders are attached by then, so
    ``enable_validation`` is known). ``time_based`` is Lightning's own test, the private
    ``Trainer._val_check_time_interval`` set, as ``ModelCheckpoint`` reads it."""
    return {
        "val_check_interval": getattr(trainer, "val_check_interval", None),  # unset on a clock
        "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
        "validates": bool(trainer.enable_validation),
        "time_based": getattr(trainer, "_val_check_time_interval", None) is not None,
    }


def validation_loader(trainer: Any) -> Any:
    """The (first) validation dataloader as its source gives it (datamodule, module hook or the
    loader passed to ``fit``), without Lightning's distributed sampler; None without one. The
    source is the validation loop's private ``_data_source``
    (``trainer.fit_loop.epoch_loop.val_loop``); without it, ``trainer.val_dataloaders``."""
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
    return first_loader(loader)


def epochs_trained_at(trainer: Any, trigger: str) -> float:
    """:func:`~svd_callback.schedule.epochs_trained` read from a ``Trainer`` at the hook
    ``trigger``: the batches of this epoch done (``batch_idx + 1``) and whether the epoch ran
    to its end (its last batch, or ``num_training_batches`` of them; ``max_steps``, a stop or
    ``max_time`` can end it early), from the fit loop's progress: the training epoch loop
    ``trainer.fit_loop.epoch_loop`` with its ``batch_idx`` and ``batch_progress.is_last_batch``
    (attributes of Lightning's internal loops)."""
    loop = getattr(trainer.fit_loop, "epoch_loop", None)
    done = getattr(loop, "batch_idx", None)
    progress = getattr(loop, "batch_progress", None)
    finished = None
    if progress is not None and done is not None:
        finished = bool(progress.is_last_batch) or done + 1 == trainer.num_training_batches
    return epochs_trained(trigger, trainer.current_epoch, None if done is None else done + 1,
                          trainer.num_training_batches, epoch_finished=finished)


def suppress_hp_metric(logger: Any) -> bool:
    """Keep a ``TensorBoardLogger`` from writing its placeholder ``hp_metric`` (-1) and its own
    HPARAMS record when Lightning logs the model's hyperparameters after ``on_fit_start``
    (``log_hyperparams`` without metrics then writes nothing to TensorBoard; ``hparams.yaml``
    is still saved): the monitor writes the run's HPARAMS record, with real metrics. Sets the
    logger's private ``_default_hp_metric``; returns whether it was set before (False for a
    logger without it)."""
    if not hasattr(logger, "_default_hp_metric"):
        return False
    before = bool(logger._default_hp_metric)
    logger._default_hp_metric = False
    return before
