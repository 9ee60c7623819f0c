"""Where the monitor's numbers go: TensorBoard, a JSON-lines history file, figures."""

from svd_callback.sinks.history import HISTORY_FILENAME, HistoryFile, read_history
from svd_callback.sinks.layout import custom_scalar_layout
from svd_callback.sinks.tensorboard import TensorBoardSink

__all__ = [
    "HISTORY_FILENAME",
    "HistoryFile",
    "TensorBoardSink",
    "custom_scalar_layout",
    "read_history",
]
