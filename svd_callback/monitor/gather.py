"""What the callback gathers from every rank besides the layer reports
(:func:`svd_callback.distributed.gather_reports`): the alerts, each with the ranks that raised
it, and the alert conditions in force. Both use ``torch.distributed.all_gather_object`` on the
default (``WORLD``) process group (:func:`svd_callback.classes.sharded.all_gather_objects`);
without a process group they return the rank's own."""

from __future__ import annotations

from collections.abc import Sequence

from svd_callback.alerts import Alert, Condition
from svd_callback.classes.sharded import all_gather_objects
from svd_callback.distributed import is_distributed

__all__ = ["gather_alerts", "gather_conditions"]


def gather_alerts(
    alerts: Sequence[Alert], world_size: int, rank: int = 0
) -> list[tuple[Alert, tuple[int, ...]]]:
    """Every rank's alerts, on every rank, each with the ranks that raised it.

    Every rank runs the rules on the same gathered report, so most alerts come from all ranks;
    a rule that reads rank-local state (a user's callable, a rank's own losses) may fire on one
    rank only. Alerts are merged by (rule, layer, mode, metric, message), in rank order. Without
    a process group, ``alerts`` with ``(rank,)``.
    """
    if not is_distributed(world_size):
        return [(alert, (rank,)) for alert in alerts]
    gathered: list[list[Alert] | None] = all_gather_objects(list(alerts), world_size)
    merged: dict[tuple, tuple[Alert, list[int]]] = {}
    for source, part in enumerate(gathered):
        for alert in part or []:
            key = (alert.rule, alert.layer, alert.mode, alert.metric, alert.message)
            merged.setdefault(key, (alert, []))[1].append(source)
    return [(alert, tuple(ranks)) for alert, ranks in merged.values()]


def gather_conditions(conditions: Sequence[Condition], world_size: int) -> list[Condition]:
    """The union of every rank's conditions in force, the same list on every rank (rank order,
    then each rank's order). A rule that reads rank-local state (a user's callable, a rank's
    own losses) can hold on some ranks only; ``alerts/active`` must read the same on every rank,
    or ``EarlyStopping``/``ModelCheckpoint`` decide differently per rank. Without a process
    group, ``conditions`` themselves."""
    if not is_distributed(world_size):
        return list(dict.fromkeys(conditions))
    gathered: list[list[Condition] | None] = all_gather_objects(list(conditions), world_size)
    return list(dict.fromkeys(Condition(*c) for part in gathered for c in part or []))
