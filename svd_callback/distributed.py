"""Split the layers across ranks and gather the per-rank reports.

Work split: the longest-processing-time-first greedy rule (Graham 1969): layers sorted by
decreasing estimated cost (:func:`svd_callback.layers.estimate_cost`) each go to the rank with the
smallest load so far; its makespan is at most 4/3 of the optimum. Ties break on rank then name,
so every rank computes the same split without communicating.

Gathering the layer reports uses ``torch.distributed.all_gather_object`` on the default
(``WORLD``) process group that the Lightning strategy initialised, the group its own
``broadcast`` uses; no group is created here. Every rank receives the full report, so every rank
can put the same aggregates into ``trainer.callback_metrics`` and reach the same alert decisions
(the alerts and conditions of every rank: :mod:`svd_callback.monitor.gather`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace

import torch

from svd_callback.report import LayerReport, Report
from svd_callback.transfer import to_host


def split_work(costs: Mapping[str, float], world_size: int) -> list[list[str]]:
    """Names per rank (``world_size`` lists), balancing the summed costs greedily.

    Each rank's list keeps the order of ``costs`` (the model's ``named_modules`` order).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    order = {name: i for i, name in enumerate(costs)}
    loads = [0.0] * world_size
    shares: list[list[str]] = [[] for _ in range(world_size)]
    for name in sorted(costs, key=lambda n: (-float(costs[n]), order[n])):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(name)
        loads[rank] += float(costs[name])
    return [sorted(share, key=order.__getitem__) for share in shares]


def split_units(
    costs: Mapping[str, float], unit: Mapping[str, Hashable], world_size: int
) -> list[list[str]]:
    """:func:`split_work` over units: the names with the same ``unit[name]`` (the records read
    from one parameter, e.g. the gates of one ``weight_hh``) go to one rank together, priced at
    their summed cost; a name without a unit is a unit of its own. Each rank's list keeps the
    order of ``costs``."""
    members: dict[Hashable, list[str]] = {}
    for name in costs:
        members.setdefault(unit.get(name, ("name", name)), []).append(name)
    leads = {group[0]: sum(float(costs[n]) for n in group) for group in members.values()}
    by_lead = {group[0]: group for group in members.values()}
    order = {name: i for i, name in enumerate(costs)}
    return [sorted((n for lead in share for n in by_lead[lead]), key=order.__getitem__)
            for share in split_work(leads, world_size)]


def is_distributed(world_size: int) -> bool:
    """True when a process group is up and spans more than one process."""
    return (
        world_size > 1
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    )


def gather_reports(
    report: Report, world_size: int, order: Sequence[str] = (), modes: Sequence[str] = ()
) -> Report:
    """Every rank's records, on every rank (singular values moved to the CPU).

    Records are sorted by mode (in ``modes`` order), then layer (in ``order``), as a
    single-process report lists them; unknown names/modes follow in rank order. Without a
    process group, returns ``report`` unchanged.
    """
    if not is_distributed(world_size):
        return report
    payload = _to_cpu(report)
    gathered: list[list[LayerReport] | None] = [None] * world_size
    torch.distributed.all_gather_object(gathered, payload, group=torch.distributed.group.WORLD)
    records = [record for part in gathered for record in (part or [])]
    position = {name: i for i, name in enumerate(order)}
    mode_position = {mode: i for i, mode in enumerate(modes)}
    records.sort(
        key=lambda r: (mode_position.get(r.mode, len(mode_position)),
                       position.get(r.name, len(position)))
    )
    return Report(records)


def _to_cpu(report: Report) -> list[LayerReport]:
    """The records with their device spectra on the CPU, moved with one transfer
    (:func:`svd_callback.transfer.to_host`) and cloned (a view would pickle the whole moved
    buffer); CPU spectra are kept as they are."""
    on_device = [r.svals.detach() if r.svals is not None and r.svals.device.type != "cpu"
                 else None for r in report]
    host = to_host(on_device)
    return [record if moved is None else replace(record, svals=moved.clone())
            for record, moved in zip(report, host, strict=True)]
