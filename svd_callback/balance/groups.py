"""Per-layer parameter groups for balanced learning rates, built from scratch or split out of an
existing optimizer's groups (keeping every other setting), and the per-group lists of its LR
schedulers extended to match.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from svd_callback.balance.tempbalance import BalancePlan

log = logging.getLogger(__name__)

# Per-group lists of torch's LR schedulers (base_lrs, _last_lr: LRScheduler; lr_lambdas:
# LambdaLR, MultiplicativeLR; min_lrs: ReduceLROnPlateau; max_lrs: CyclicLR).
SCHEDULER_GROUP_LISTS = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "max_lrs")
# Lists of torch's schedulers that are not per group (SequentialLR, ChainedScheduler).
_OTHER_LISTS = ("_schedulers", "_milestones")


def param_owners(model: nn.Module, plan: BalancePlan) -> dict[int, str]:
    """``id(parameter)`` -> the module (tuned layer or paired norm layer) that owns it directly
    (a parameter shared by several is given to the first in module order)."""
    owners: dict[int, str] = {}
    for name, module in model.named_modules():
        if plan.rate_owner(name) is None:
            continue
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), name)
    return owners


def balanced_param_groups(
    model: nn.Module, plan: BalancePlan, base: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One group per tuned module (``named_modules`` order), then one for every other
    parameter: the reference's layout. Every group carries ``base`` (e.g. ``lr``,
    ``weight_decay``)."""
    base = dict(base or {})
    owners = param_owners(model, plan)
    by_module: dict[str, list[nn.Parameter]] = {}
    rest: list[nn.Parameter] = []
    for p in model.parameters():
        if id(p) in owners:
            by_module.setdefault(owners[id(p)], []).append(p)
        else:
            rest.append(p)
    groups = [dict(base, params=ps) for ps in by_module.values()]
    return [*groups, dict(base, params=rest)]


def split_optimizer_groups(
    optimizer: torch.optim.Optimizer, model: nn.Module, plan: BalancePlan
) -> tuple[dict[int, str], list[int]]:
    """Give every tuned module its own parameter group(s), keeping each group's settings.

    A group whose parameters all belong to one tuned module stays as it is; otherwise the
    parameters of each tuned module move to a new group (appended, a copy of the group they
    came from). Returns ``(group index -> module name, parent group index of each appended
    group)``. The original groups keep their indices.
    """
    owners = param_owners(model, plan)
    group_module: dict[int, str] = {}
    moves: list[tuple[int, str, list[nn.Parameter]]] = []
    for index, group in enumerate(optimizer.param_groups):
        names = {owners.get(id(p)) for p in group["params"]}
        if len(names) == 1 and None not in names:
            group_module[index] = names.pop()  # type: ignore[assignment]
            continue
        split: dict[str, list[nn.Parameter]] = {}
        for p in group["params"]:
            if id(p) in owners:
                split.setdefault(owners[id(p)], []).append(p)
        for name, params in split.items():
            moves.append((index, name, params))
    parents = []
    for index, name, params in moves:
        group = optimizer.param_groups[index]
        moved = {id(p) for p in params}
        group["params"] = [p for p in group["params"] if id(p) not in moved]
        settings = {k: v for k, v in group.items() if k != "params"}
        optimizer.add_param_group(dict(settings, params=params))
        group_module[len(optimizer.param_groups) - 1] = name
        parents.append(index)
    return group_module, parents


def _scheduler_tree(scheduler: Any) -> Iterable[Any]:
    """The scheduler and those it chains (``SequentialLR``, ``ChainedScheduler``)."""
    yield scheduler
    for child in getattr(scheduler, "_schedulers", []) or []:
        yield from _scheduler_tree(child)


def extend_scheduler_lists(
    scheduler: Any, optimizer: torch.optim.Optimizer, n_before: int, parents: Sequence[int]
) -> list[str]:
    """Extend a scheduler's per-group lists (``SCHEDULER_GROUP_LISTS``) for the groups appended
    by ``split_optimizer_groups``, each new entry a copy of its parent group's. Returns the
    names of other list attributes of length ``n_before`` (they may be per-group lists this
    function does not know)."""
    unknown = []
    for sched in _scheduler_tree(scheduler):
        if getattr(sched, "optimizer", optimizer) is not optimizer:
            continue
        for attr, value in vars(sched).items():
            if not isinstance(value, list) or len(value) != n_before:
                continue
            if attr in SCHEDULER_GROUP_LISTS:
                value.extend(value[p] for p in parents)
            elif attr not in _OTHER_LISTS:
                unknown.append(f"{type(sched).__name__}.{attr}")
    return unknown
