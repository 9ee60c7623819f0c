"""What the monitor prints on the console, one line per message (rank 0 only).

- Alerts are events of the run, not faults of the code: :func:`alert` logs them to the
  ``svd_callback`` logger (``logging.WARNING`` for a ``warning`` or ``stop`` alert,
  ``logging.INFO`` for an ``info`` one, through Lightning's ``rank_zero_info``). Without a
  logging configuration Python prints a warning as its message alone; silence them with
  ``logging.getLogger("svd_callback").setLevel(logging.ERROR)``.
- Problems of the monitor itself (a layer skipped, a sink that failed) stay Python warnings
  (``warnings.filterwarnings`` and ``pytest.warns`` keep working), issued by :func:`warn` at the
  first caller outside this package, as :func:`warnings.warn` does for a library that passes
  the right ``stacklevel``: inside a Lightning fit that caller is Lightning's own code, whose
  warning format (``lightning.fabric.utilities.warnings``) prints the message on one line
  instead of echoing the source line that issued it.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_only

__all__ = ["LOGGER_NAME", "alert", "outside_stacklevel", "warn"]

LOGGER_NAME = "svd_callback"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The ``svd_callback`` package folder: frames in it are the monitor's own."""
_log = logging.getLogger(LOGGER_NAME)


def outside_stacklevel() -> int:
    """The ``stacklevel`` that makes :func:`warnings.warn`, called by the caller of this
    function, report the first frame outside :data:`PACKAGE_ROOT` (2, the caller's caller, when
    every frame is inside)."""
    frame = sys._getframe(2)  # the caller's caller: stacklevel 2 of the caller
    level = 2
    while frame is not None:
        if not Path(frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_ROOT):
            return level
        frame = frame.f_back
        level += 1
    return 2


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """A Python warning on rank 0 at the first frame outside this package."""
    if getattr(rank_zero_only, "rank", 0) == 0:
        warnings.warn(message, category, stacklevel=outside_stacklevel())


def alert(message: str, severity: str) -> None:
    """One alert on the console (rank 0): ``info`` at ``logging.INFO`` (Lightning's
    ``rank_zero_info``), ``warning`` and ``stop`` at ``logging.WARNING`` on the
    :data:`LOGGER_NAME` logger."""
    if severity == "info":
        rank_zero_info(message)
    elif getattr(rank_zero_only, "rank", 0) == 0:
        _log.warning(message)
