"""Reading inputs from a Trainer's data for the callback's own forward passes: the conv
input-size probe (``operator`` mode) and the class probe (whose validation loader comes from
:func:`svd_callback.monitor.trainer_access.validation_loader`).

A batch is read by :func:`svd_callback.classes.probe.read_batch` (dict batches: the inputs
under the first of its ``INPUT_KEYS`` present, else the first key; sequences: the first item).
Every read happens inside ``isolate_rng`` so that random augmentations, samplers and a
loader's base seed leave the global generators as they were.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch.nn.modules.lazy import LazyModuleMixin

from svd_callback.classes.probe import read_batch

__all__ = [
    "KeyRecorder",
    "first_loader",
    "first_training_input",
    "forward_for",
    "has_uninitialised_lazy",
]

Forward = Callable[[torch.nn.Module, Any], Any]


def has_uninitialised_lazy(model: torch.nn.Module) -> bool:
    """Whether a lazy module (``LazyLinear``, ``LazyConv2d``...) still waits for its first
    forward to create its parameters."""
    return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()
               for m in model.modules())


def _tensor_or_dict_forward(model: torch.nn.Module, inputs: Any, key: str) -> Any:
    """``model(inputs)``; a model that rejects them (its forward reads a dict batch) gets
    ``model({key: inputs})``."""
    try:
        return model(inputs)
    except Exception:  # noqa: BLE001 - the dict form is tried next; its error is the one raised
        return model({key: inputs})


def forward_for(key: str | None, forward_fn: Forward | None) -> Forward | None:
    """How to run the model on inputs taken from a batch (``key``: their key in a dict batch):
    the user's ``forward_fn``, else the tensor-or-dict default (None, i.e. ``model(inputs)``,
    when there is no key)."""
    if forward_fn is not None:
        return forward_fn
    return None if key is None else functools.partial(_tensor_or_dict_forward, key=key)


def first_loader(loader: Any) -> Any:
    if isinstance(loader, Mapping):
        return next(iter(loader.values()), None)
    if isinstance(loader, (list, tuple)):
        return loader[0] if loader else None
    return loader


def first_training_input(trainer: Any) -> tuple[Any, str | None]:
    """The inputs of a one-sample batch from the training data, and their key when the batch
    is a dict: read through the dataset (``dataset[0]`` and the loader's ``collate_fn``), or
    the loader's first batch when the dataset is not indexable."""
    loader = first_loader(trainer.train_dataloader)
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
    parts = read_batch(batch)
    return parts.inputs, parts.key


class KeyRecorder:
    """Iterates ``loader`` and remembers the input key of its last batch (None unless it is a
    dict batch; :func:`~svd_callback.classes.probe.read_batch`)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.key: str | None = None

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            self.key = read_batch(batch).key
            yield batch
