"""Sharded models: reading a layer's full weight, and the strategies the monitor refuses.

FSDP2 (``torch.distributed.fsdp.fully_shard``, Lightning's ``ModelParallelStrategy``) keeps each
parameter as a ``DTensor`` sharded along its first dimension. :func:`full_weight` gathers one
weight with ``DTensor.full_tensor()`` (an all-gather on the parameter's mesh). A gather is a
collective: every rank must take part in it, in the same order. The monitor divides the layers
of a sharded model over the ranks (:mod:`svd_callback.monitor.runner`): every rank first takes
part in the gather of every analysed weight, each weight delivered to the one rank that analyses
it (:func:`gather_to`, :func:`gather_shares`), then each rank decomposes its share with no
collective in between, reading its gathered copies (:func:`gathered_weights`), and the reports
are gathered as under DDP.

FSDP1 (``FullyShardedDataParallel``, Lightning's ``FSDPStrategy``) flattens the parameters of a
wrapped unit into one flat buffer, and DeepSpeed ZeRO partitions them outside ``torch``; the
monitor does not read those and refuses the strategy at setup (:func:`refusal`): a warning and a
monitor that does nothing for that fit, never a hang.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from svd_callback.layers import LayerSpec

__all__ = ["REFUSED_STRATEGIES", "divisible", "full_weight", "gather_shares", "gather_to",
           "gathered_copy", "gathered_weights", "is_sharded", "refusal"]

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


_COPIES: ContextVar[Mapping[tuple[int, str], torch.Tensor]] = ContextVar(
    "svd_callback_gathered_weights", default=MappingProxyType({}))


@contextlib.contextmanager
def gathered_weights(copies: Mapping[tuple[nn.Module, str], torch.Tensor]) -> Iterator[None]:
    """Inside the block, ``(module, param)``'s full weight is read from ``copies`` (gathered
    before, :func:`gather_shares`) instead of gathering it again
    (:meth:`svd_callback.layers.MatrixView.__call__`)."""
    token = _COPIES.set({(id(module), param): t for (module, param), t in copies.items()})
    try:
        yield
    finally:
        _COPIES.reset(token)


def gathered_copy(module: nn.Module, param: str) -> torch.Tensor | None:
    """The copy of ``module.<param>`` given to :func:`gathered_weights`, else None."""
    return _COPIES.get().get((id(module), param))


def _shard_type() -> type | None:
    try:
        from torch.distributed.tensor import Shard
    except ImportError:  # a build without torch.distributed
        return None
    return Shard


def divisible(tensors: Iterable[torch.Tensor], world_size: int) -> bool:
    """Every ``DTensor`` among ``tensors`` lives on a mesh of all ``world_size`` ranks, so every
    rank takes part in its gather and any rank can receive it: the work can be divided."""
    return all(t.device_mesh.size() == world_size for t in tensors if is_dtensor(t))


def _sharded_rows(tensor: Any) -> bool:
    """``tensor`` is sharded along dim 0 over a 1-D mesh (``Shard(0)``: FSDP2's default)."""
    shard = _shard_type()
    placements = tuple(tensor.placements)
    return (shard is not None and tensor.device_mesh.ndim == 1 and len(placements) == 1
            and type(placements[0]) is shard and placements[0].dim == 0)


def gather_to(tensor: torch.Tensor, owner: int, rank: int) -> torch.Tensor | None:
    """The full value of ``tensor`` on rank ``owner`` and None on the other ranks.

    A ``DTensor`` sharded by rows over a 1-D mesh is gathered to ``owner`` alone
    (``torch.distributed.gather`` on the mesh's group: the other ranks send their shard and
    receive nothing). Shards follow ``torch.chunk``: rank i holds rows ``[i c, min(n, (i + 1)
    c))``, c = ceil(n / ranks), so each is padded to c rows for the collective and trimmed after.
    Any other placement is gathered with ``full_tensor()`` on every rank and kept by ``owner``.
    A collective for a ``DTensor``: every rank of its mesh calls it, in the same order; a plain
    tensor is returned on ``owner`` without communication.
    """
    if not is_dtensor(tensor):
        return tensor if rank == owner else None
    if not _sharded_rows(tensor):
        full = tensor.full_tensor()
        return full if rank == owner else None
    group = tensor.device_mesh.get_group()
    ranks = tensor.device_mesh.size()
    rows = int(tensor.shape[0])
    chunk = math.ceil(rows / ranks) if rows else 0
    local = tensor.to_local()
    padded = local.new_zeros((chunk, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ranks)] if rank == owner else None
    torch.distributed.gather(padded, parts, dst=owner, group=group)
    if parts is None:
        return None
    sizes = [max(0, min(chunk, rows - i * chunk)) for i in range(ranks)]
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def sketch_row_block(tensor: torch.Tensor, rows: tuple[int, int] | None,
                     sketch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """``sketch`` of rows ``rows`` (all when None) of a ``DTensor`` sharded by rows over a 1-D
    mesh, made where the rows live and all-gathered: each rank applies ``sketch`` (rows ->
    float32 rows on the same device) to its shard's rows within the block, pads them to the
    shard size and the padded pieces are all-gathered and joined in row order, so no rank
    materialises the weight. None for any other tensor (the caller reads the full weight). A
    collective for such a ``DTensor``: every rank of its mesh calls it, in the same order.
    """
    if not is_dtensor(tensor) or not _sharded_rows(tensor):
        return None
    group = tensor.device_mesh.get_group()
    ranks, me = tensor.device_mesh.size(), tensor.device_mesh.get_local_rank()
    total = int(tensor.shape[0])
    start, stop = rows if rows is not None else (0, total)
    chunk = math.ceil(total / ranks) if total else 0
    spans = [(max(start, i * chunk), min(stop, (i + 1) * chunk, total)) for i in range(ranks)]
    local = tensor.to_local()
    low, high = spans[me]
    mine = sketch(local[max(0, low - me * chunk):max(0, high - me * chunk)])
    padded = mine.new_zeros((chunk, *mine.shape[1:]))
    padded[: mine.shape[0]] = mine
    parts = [torch.empty_like(padded) for _ in range(ranks)]
    torch.distributed.all_gather(parts, padded, group=group)
    return torch.cat([part[:max(0, high - low)]
                      for part, (low, high) in zip(parts, spans, strict=True)])


def gather_shares(
    specs: Iterable[LayerSpec], owner: Mapping[str, int], rank: int
) -> dict[tuple[nn.Module, str], torch.Tensor]:
    """Every sharded weight read by ``specs``, gathered to the rank that analyses it
    (``owner[spec.name]``); returns this rank's copies, by ``(module, param)``.

    A collective: every rank calls it with the same ``specs`` and ``owner`` (each parameter is
    gathered once, in ``specs`` order). Weights that are plain tensors, or on the meta device,
    are not gathered (the owner reads them itself).
    """
    copies: dict[tuple[nn.Module, str], torch.Tensor] = {}
    seen: set[tuple[int, str]] = set()
    with torch.no_grad():
        for spec in specs:
            key = (id(spec.module), spec.matrix.param)
            if key in seen:
                continue
            seen.add(key)
            stored = spec.matrix.stored(spec.module)
            if not is_dtensor(stored) or stored.is_meta:
                continue
            full = gather_to(stored.detach(), owner[spec.name], rank)
            if full is not None:
                copies[(spec.module, spec.matrix.param)] = full
    return copies


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
