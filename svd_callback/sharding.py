"""Sharded models: reading a layer's full weight, and the strategies the monitor refuses.

FSDP2 (``torch.distributed.fsdp.fully_shard``, Lightning's ``ModelParallelStrategy``) keeps each
parameter as a ``DTensor`` sharded along its first dimension. :func:`full_weight` gathers one
weight with ``DTensor.full_tensor()`` (an all-gather on the parameter's mesh): the memory held is
one layer's full weight at a time. The gather is a collective, so on a sharded model every rank
reads every analysed weight in the same order (no split of the layers over the ranks, see
:mod:`svd_callback.monitor.runner`).

FSDP1 (``FullyShardedDataParallel``, Lightning's ``FSDPStrategy``) flattens the parameters of a
wrapped unit into one flat buffer, and DeepSpeed ZeRO partitions them outside ``torch``; the
monitor does not read those and refuses the strategy at setup (:func:`refusal`): a warning and a
monitor that does nothing for that fit, never a hang.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["REFUSED_STRATEGIES", "full_weight", "is_sharded", "refusal"]

REFUSED_STRATEGIES = {
    "FSDPStrategy": "FSDP1 flattens each wrapped unit's parameters into one sharded buffer",
    "DeepSpeedStrategy": "DeepSpeed ZeRO partitions the parameters outside torch",
}
"""Strategy class names (matched along the strategy's class hierarchy) and why each is refused."""


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a build without torch.distributed
        return None
    return DTensor


def is_dtensor(tensor: Any) -> bool:
    """``tensor`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2 / tensor-parallel shard)."""
    kind = _dtensor_type()
    return kind is not None and isinstance(tensor, kind)


def full_weight(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of a ``DTensor`` (a collective: every rank must call it), else ``tensor``."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def is_sharded(model: nn.Module) -> bool:
    """Some parameter of ``model`` is a ``DTensor``: reading its full value is a collective."""
    return any(is_dtensor(p) for p in model.parameters())


def refusal(strategy: Any) -> str | None:
    """Why the monitor cannot run under ``strategy`` (a Lightning strategy), or None."""
    for cls in type(strategy).__mro__:
        reason = REFUSED_STRATEGIES.get(cls.__name__)
        if reason is not None:
            return (f"the {cls.__name__} strategy is not supported ({reason}); the monitor is "
                    f"off for this fit (FSDP2 through ModelParallelStrategy or fully_shard is)")
    return None
