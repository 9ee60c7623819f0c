"""The class probe split over the ranks of a sharded (FSDP2) model.

A sharded forward is collective: every rank must run the same number of forward passes, in step.
:class:`ProbeSplit` gives rank r the contiguous slice ``[r * n, (r + 1) * n)`` of the I probe
images, n = ceil(I / world), padded to n images with copies of the probe's first image (a rank
whose slice is short or empty still runs every forward pass, so no rank waits forever; the
padding rows are dropped). After the forward pass :func:`merge_captured` all-gathers what each
rank's hooks kept per image (the (n, k) neuron signals of each layer, the pooled features, the
first outputs of the factorization layers), concatenates the slices in rank order, which is the
probe's own order, and unites the per-layer errors. The per-layer singular values and vectors
come from the full (gathered) weight and are the same on every rank. Every rank then computes
the same statistics as one process on the whole probe (up to the summation order of float
reductions inside the forward pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ProbeSplit", "all_gather_objects", "merge_captured"]

Gather = Callable[[Any, int], list[Any]]
"""``gather(obj, world)``: every rank's ``obj``, in rank order (a collective)."""


def all_gather_objects(obj: Any, world: int) -> list[Any]:
    """``torch.distributed.all_gather_object`` on the default (``WORLD``) process group
    (``[obj]`` for a world of one)."""
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, obj, group=torch.distributed.group.WORLD)
    return gathered


@dataclass(frozen=True)
class ProbeSplit:
    """This rank's share of the probe forward pass.

    Attributes:
        rank: this process's rank (0 <= rank < world).
        world: the number of processes taking part.
        gather: the all-gather used to merge the slices (:func:`all_gather_objects`).
    """

    rank: int
    world: int
    gather: Gather = all_gather_objects

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside a world of {self.world}")

    def bounds(self, size: int) -> tuple[int, int, int]:
        """(start, stop, n): this rank's images ``[start, stop)`` of ``size``, and the padded
        slice length n = ceil(size / world) every rank runs."""
        n = math.ceil(size / self.world)
        start = min(self.rank * n, size)
        return start, min(start + n, size), n

    def slice(self, inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
        """This rank's padded slice of ``inputs`` (n rows) and how many of them are real."""
        start, stop, n = self.bounds(len(inputs))
        part = inputs[start:stop]
        missing = n - (stop - start)
        if missing > 0:
            part = torch.cat([part, inputs[:1].expand(missing, *inputs.shape[1:])])
        return part, stop - start


def merge_captured(captured: Any, split: ProbeSplit, real: int) -> None:
    """Replace the per-image pieces of ``captured`` (``signals``, ``features``, ``outputs``,
    ``errors`` as in the class analysis's capture) by those of every rank, in place; a
    collective. ``real``: the number of this rank's rows that are probe images."""

    def local(pieces: list[torch.Tensor], rows: int) -> torch.Tensor | None:
        return torch.cat(pieces)[:rows].detach().cpu() if pieces else None

    payload = {
        "signals": {name: local(p, real) for name, p in captured.signals.items()},
        "features": local(captured.features, real),
        "outputs": {name: local(p, real) for name, p in captured.outputs.items()},
        "errors": dict(captured.errors),
    }
    parts = split.gather(payload, split.world)
    devices = _devices(captured)

    def joined(pieces: list[torch.Tensor | None], key: str) -> list[torch.Tensor]:
        kept = [p for p in pieces if p is not None]
        return [torch.cat(kept).to(devices.get(key, "cpu"))] if kept else []

    signal_names = dict.fromkeys(n for part in parts for n in part["signals"])
    captured.signals = {name: joined([part["signals"].get(name) for part in parts], name)
                        for name in signal_names}
    captured.signals = {name: p for name, p in captured.signals.items() if p}
    captured.features = joined([part["features"] for part in parts], "features")
    output_names = dict.fromkeys(n for part in parts for n in part["outputs"])
    captured.outputs = {name: joined([part["outputs"].get(name) for part in parts],
                                     f"output {name}") for name in output_names}
    captured.outputs = {name: p for name, p in captured.outputs.items() if p}
    for part in parts:
        for key, error in part["errors"].items():
            captured.errors.setdefault(key, error)


def _devices(captured: Any) -> dict[str, torch.device]:
    """Where this rank's pieces were (the merged ones go back there)."""
    out = {name: p[0].device for name, p in captured.signals.items() if p}
    if captured.features:
        out["features"] = captured.features[0].device
    out.update({f"output {name}": p[0].device for name, p in captured.outputs.items() if p})
    return out
