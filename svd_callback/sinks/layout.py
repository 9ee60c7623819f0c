"""TensorBoard custom-scalar layout: the ``layout`` dict of ``SummaryWriter.add_custom_scalars``
from typed charts (:class:`~svd_callback.sinks.tags.Chart`).

Each chart is a ``Multiline`` chart of the tags its pattern matches; the sections come in the
order of their rank and the charts of a section in theirs, whichever run TensorBoard reads first.
Which charts a run gets is :func:`svd_callback.monitor.scalars.layout_charts`.
"""

from __future__ import annotations

from collections.abc import Iterable

from svd_callback.sinks.tags import Chart, Section


def custom_scalar_layout(
    charts: Iterable[Chart], sections: Iterable[Section] = ()
) -> dict[str, dict[str, list]]:
    """The ``layout`` dict of ``charts``; ``sections`` are shown even without a chart."""
    charts = set(charts)
    ordered = sorted({*sections, *(c.section for c in charts)}, key=lambda s: s.rank)
    layout: dict[str, dict[str, list]] = {}
    for section in ordered:
        mine = sorted((c for c in charts if c.section == section), key=lambda c: c.rank)
        layout[section.name] = {c.title: ["Multiline", [c.pattern]] for c in mine}
    return layout
