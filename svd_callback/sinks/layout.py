"""TensorBoard custom-scalar layout: one chart per metric holding every layer.

Categories in a fixed order: ``spectral summary`` (one chart per aggregate overlaying the
modes), ``alerts`` (the conditions in force and the alerts raised per analysis, the cumulative
total, the cumulative count per rule and the count per analysis), then one category per conv
mode (``spectral (unfold)``, ``spectral (operator)``, ...) with one multiline chart per metric
whose regex ``^spectral/<metric>/.*`` (``^spectral/<metric>\\.<mode>/`` for a secondary mode)
collects all layers (the ``"motion"`` metrics, the weight's own, under the primary mode only),
and (when class statistics are logged) a ``classes`` category with one chart per statistic
``^classes/<stat>/`` holding every layer. TensorBoard shows the categories in this order
whichever run it reads first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from svd_callback.metric_groups import METRIC_GROUPS
from svd_callback.sinks.tags import custom_scalar_regex


def custom_scalar_layout(
    metrics: Iterable[str],
    modes: Sequence[str],
    summary_keys: Iterable[str] = (),
    class_stats: Iterable[str] = (),
) -> dict[str, dict[str, list]]:
    """The ``layout`` dict for ``SummaryWriter.add_custom_scalars``; ``modes[0]`` is primary."""
    metrics = list(metrics)
    primary = modes[0]
    layout: dict[str, dict[str, list]] = {}
    summary = {
        key: ["Multiline", [rf"^spectral_summary/{re.escape(key)}(\.[a-z_]+)?$"]]
        for key in summary_keys
    }
    if summary:
        layout["spectral summary"] = summary
    layout["alerts"] = {
        "alerts/active (conditions in force, per analysis)": ["Multiline", [r"^alerts/active$"]],
        "alerts/raised (warning or stop, raised per analysis)": [
            "Multiline", [r"^alerts/raised$"]],
        "alerts/total (cumulative)": ["Multiline", [r"^alerts/total$"]],
        "alerts/rule (cumulative, per rule)": ["Multiline", [r"^alerts/rule/.*"]],
        "alerts/count (per analysis)": ["Multiline", [r"^alerts/count$"]],
    }
    weight_only = set(METRIC_GROUPS["motion"])  # the weight's own: primary mode only
    for mode in modes:
        layout[f"spectral ({mode})"] = {
            metric: ["Multiline", [custom_scalar_regex(metric, mode, primary)]]
            for metric in metrics if mode == primary or metric not in weight_only
        }
    classes = {stat: ["Multiline", [rf"^classes/{re.escape(stat)}/.*"]] for stat in class_stats}
    if classes:
        layout["classes"] = classes
    return layout
