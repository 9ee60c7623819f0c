"""TensorBoard custom-scalar layout: a ``tensorboard.Layout`` proto from typed charts
(:class:`~svd_callback.sinks.tags.Chart`).

A chart is a ``Multiline`` chart of the tags its pattern matches, or a ``Margin`` chart of its
value, lower and upper tags (TensorBoard draws these unsmoothed); the sections (categories)
come in the order of their rank, closed ones collapsed, and the charts of a section in theirs,
whichever run TensorBoard reads first. TensorBoard (2.21) draws a category's multiline charts
first, in their order, then its margin charts in the reverse of theirs (measured in Chromium),
so the margin charts are written in reverse rank order. Which charts a run gets is
:func:`svd_callback.monitor.scalars.layout_charts`.
"""

from __future__ import annotations

from collections.abc import Iterable

from tensorboard.plugins.custom_scalar import layout_pb2

from svd_callback.sinks.tags import Chart, Section

__all__ = ["custom_scalar_layout", "layout_dict"]


def custom_scalar_layout(
    charts: Iterable[Chart], sections: Iterable[Section] = ()
) -> layout_pb2.Layout:
    """The layout of ``charts`` (margin charts in reverse rank order, see above); ``sections``
    are shown even without a chart."""
    charts = set(charts)
    ordered = sorted({*sections, *(c.section for c in charts)}, key=lambda s: s.rank)
    layout = layout_pb2.Layout()
    for section in ordered:
        category = layout.category.add(title=section.name, closed=section.closed)
        mine = sorted((c for c in charts if c.section == section), key=lambda c: c.rank)
        lines = [c for c in mine if c.margin is None]
        margins = [c for c in mine if c.margin is not None]
        for chart in [*lines, *reversed(margins)]:  # as TensorBoard shows them: in rank order
            if chart.margin is not None:
                value, lower, upper = chart.margin
                category.chart.add(title=chart.title).margin.series.add(
                    value=value, lower=lower, upper=upper)
            else:
                category.chart.add(title=chart.title).multiline.tag.append(chart.pattern)
    return layout


def layout_dict(layout: layout_pb2.Layout) -> dict[str, dict[str, list]]:
    """``layout`` in ``SummaryWriter.add_custom_scalars``' format (``{category: {title:
    ["Multiline", [regex]] or ["Margin", [value, lower, upper]]}}``; no closed sections)."""
    out: dict[str, dict[str, list]] = {}
    for category in layout.category:
        charts = out.setdefault(category.title, {})
        for chart in category.chart:
            if chart.HasField("margin"):
                (series,) = chart.margin.series
                charts[chart.title] = ["Margin", [series.value, series.lower, series.upper]]
            else:
                charts[chart.title] = ["Multiline", list(chart.multiline.tag)]
    return out
