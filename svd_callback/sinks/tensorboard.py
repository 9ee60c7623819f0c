"""Write scalars, histograms, text, figures and a custom-scalar layout to a TensorBoard writer.

Every scalar, histogram and text value carries a ``SummaryMetadata.summary_description`` (shown
in TensorBoard's chart tooltip) saying how the number was made. Scalars are ``simple_value``
summaries, as ``SummaryWriter.add_scalar`` writes them, plus metadata naming the scalars plugin
and data class, so that both TensorBoard's loaders and ``EventAccumulator.Scalars`` read them with
their description; histograms and text use TensorBoard's own ``histogram_pb`` / ``text_pb``. As
TensorFlow's summary ops do, a tag's metadata is written with its first value in each event file
only. Writers other than ``torch.utils.tensorboard.SummaryWriter`` (tensorboardX) get the plain
``add_*`` calls, without descriptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from svd_callback.sinks import tags


def histogram_buckets(values: np.ndarray, most: int = 64) -> int:
    """Buckets for a histogram of the finite ``values`` (n of them): numpy's ``"auto"`` rule,
    the larger count of Sturges' ``ceil(log2 n) + 1`` and Freedman-Diaconis'
    ``ceil(range / (2 IQR n^(-1/3)))`` (Sturges alone when the IQR is 0), then at most n and
    ``most``, at least 1. Ten singular values get 5 buckets instead of a picket fence of 64."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    n = values.size
    if n < 2 or values.max() == values.min():
        return 1
    count = len(np.histogram_bin_edges(values, bins="auto")) - 1
    return int(max(1, min(count, n, most)))


class TensorBoardSink:
    """Thin wrapper around a ``SummaryWriter`` (e.g. ``TensorBoardLogger.experiment``).

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` or a compatible writer.
        histogram_buckets: the most buckets of a singular-value histogram (fewer for few
            values: :func:`histogram_buckets`).
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
        from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_SCALAR, Summary

        summary = Summary()
        for tag, value in values.items():
            entry = summary.value.add(tag=tag, simple_value=float(value))
            if tag not in self._described:
                entry.metadata.plugin_data.plugin_name = "scalars"
                entry.metadata.data_class = DATA_CLASS_SCALAR
                entry.metadata.summary_description = self._describe(tag, descriptions) or ""
        self._add(summary, step)

    def histogram(
        self, tag: str, values: np.ndarray, step: int, description: str | None = None
    ) -> None:
        """Histogram of ``values`` (finite entries only) at ``step`` in
        :func:`histogram_buckets` equal-width buckets."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        if not self._native:
            self.writer.add_histogram(tag, values, step,
                                      bins=histogram_buckets(values, self.histogram_buckets))
            return
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb

        described = self._describe(tag, {tag: description} if description else {})
        buckets = histogram_buckets(values, self.histogram_buckets)
        summary = histogram_pb(tag, values, buckets=buckets, description=described)
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

    def layout(self, layout: Any) -> None:
        """A custom-scalar layout (a ``tensorboard.Layout`` proto,
        :func:`~svd_callback.sinks.layout.custom_scalar_layout`); another writer gets it through
        ``add_custom_scalars`` (without closed sections)."""
        if not self._native:
            from svd_callback.sinks.layout import layout_dict

            self.writer.add_custom_scalars(layout_dict(layout))
            return
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.plugins.custom_scalar import metadata

        tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()])
        tensor.tensor_shape.SetInParent()
        smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME))
        self._add(Summary(value=[Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor,
                                               metadata=smd)]), 0)

    def summaries(self, summaries: list[Any], step: int = 0) -> bool:
        """Write ready-made ``Summary`` protos (e.g. the HPARAMS records) at ``step``, adding
        no scalar point. Returns False for a writer other than
        ``torch.utils.tensorboard.SummaryWriter`` (nothing written)."""
        if not self._native:
            return False
        for summary in summaries:
            self._add(summary, step)
        return True

    def purge_from(self, step: int) -> bool:
        """Hide every event at ``step`` or later written before this call (a resumed run).

        Writes ``SessionLog.START`` events at ``step``, as ``SummaryWriter(purge_step=step)``
        does: TensorBoard's loaders then drop the earlier events whose step is >= ``step``, in
        every event file of the directory read before this one, so that the values written after
        the checkpoint by the interrupted run do not show beside the resumed run's. The event is
        written twice: the server's loader (``plugin_event_accumulator``) takes the first START
        of a run for the session's start and only a later one for a restart, and the interrupted
        run wrote none. Returns False for a writer other than
        ``torch.utils.tensorboard.SummaryWriter`` (nothing written).
        """
        if not self._native:
            return False
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        writer = self.writer._get_file_writer()
        for _ in range(2):
            writer.add_event(Event(step=int(step),
                                   session_log=SessionLog(status=SessionLog.START)))
        return True

    def flush(self) -> None:
        self.writer.flush()

    def _describe(self, tag: str, descriptions: Mapping[str, str]) -> str | None:
        """The description to write with ``tag``'s value, markdown-escaped: on its first value
        only."""
        if tag in self._described:
            return None
        self._described.add(tag)
        description = descriptions.get(tag)
        return None if description is None else tags.escape_markdown(description)

    def _add(self, summary: Any, step: int) -> None:
        self.writer._get_file_writer().add_summary(summary, step)
