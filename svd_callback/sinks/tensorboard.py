"""Write scalars, histograms, text, figures and a custom-scalar layout to a TensorBoard writer.

Scalars, histograms and text are written as TensorBoard's modern tensor summaries with a
``summary_description`` (shown in the chart's tooltip), built with TensorBoard's own
``scalar_pb`` / ``histogram_pb`` / ``text_pb`` and passed to the writer's event file. As
TensorFlow's summary ops do, a tag's description is written with its first value in each event
file only. Writers other than ``torch.utils.tensorboard.SummaryWriter`` (tensorboardX) get the
plain ``add_*`` calls, without descriptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class TensorBoardSink:
    """Thin wrapper around a ``SummaryWriter`` (e.g. ``TensorBoardLogger.experiment``).

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` or a compatible writer.
        histogram_buckets: number of buckets of each singular-value histogram.
    """

    def __init__(self, writer: Any, histogram_buckets: int = 64) -> None:
        self.writer = writer
        self.histogram_buckets = histogram_buckets
        self._described: set[str] = set()
        self._native = type(writer).__module__.startswith("torch.utils.tensorboard")

    def scalars(
        self,
        values: Mapping[str, float],
        step: int,
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        """One scalar per tag at ``step``; ``descriptions`` maps tags to their descriptions."""
        descriptions = descriptions or {}
        if not self._native:
            for tag, value in values.items():
                self.writer.add_scalar(tag, float(value), step)
            return
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb

        for tag, value in values.items():
            summary = scalar_pb(tag, float(value), description=self._describe(tag, descriptions))
            self._add(summary, step)

    def histogram(
        self, tag: str, values: np.ndarray, step: int, description: str | None = None
    ) -> None:
        """Histogram of ``values`` (finite entries only) at ``step``."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        if not self._native:
            self.writer.add_histogram(tag, values, step)
            return
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb

        described = self._describe(tag, {tag: description} if description else {})
        summary = histogram_pb(tag, values, buckets=self.histogram_buckets, description=described)
        self._add(summary, step)

    def text(self, tag: str, markdown: str, step: int, description: str | None = None) -> None:
        """A markdown text entry at ``step``."""
        if not self._native:
            self.writer.add_text(tag, markdown, step)
            return
        from tensorboard.plugins.text.summary_v2 import text_pb

        described = self._describe(tag, {tag: description} if description else {})
        self._add(text_pb(tag, markdown, description=described), step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib ``Figure`` rendered to an RGB image at ``step``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        """A custom-scalar layout (``SummaryWriter.add_custom_scalars`` format)."""
        self.writer.add_custom_scalars(dict(layout))

    def flush(self) -> None:
        self.writer.flush()

    def _describe(self, tag: str, descriptions: Mapping[str, str]) -> str | None:
        """The description to write with ``tag``'s value: on its first value only."""
        if tag in self._described:
            return None
        self._described.add(tag)
        return descriptions.get(tag)

    def _add(self, summary: Any, step: int) -> None:
        self.writer._get_file_writer().add_summary(summary, step)
