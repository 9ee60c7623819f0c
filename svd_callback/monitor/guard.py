"""The callback's one guard: an exception in the analysis or the logging becomes a warning and
training goes on; messages that would repeat at every analysis are given once. Warnings are
issued at the first caller outside the package (:func:`svd_callback.monitor.console.warn`):
one line on the console in a Lightning fit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from svd_callback.monitor import console

__all__ = ["Guard"]

PREFIX = "SpectralMonitor"


class Guard:
    """Never-crash wrapper and warn-once memory (rank 0 speaks, as Lightning's helpers do)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def reset(self) -> None:
        """Forget the messages given (a new ``fit``)."""
        self._seen.clear()

    def first(self, key: str) -> bool:
        """True the first time ``key`` is seen, False afterwards."""
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def warn(self, message: str) -> None:
        """A warning that says training continues."""
        console.warn(f"{PREFIX}: {message}; training continues.")

    def warn_once(self, key: str, message: str) -> None:
        """``message`` as a plain warning, the first time ``key`` is seen."""
        if self.first(key):
            console.warn(f"{PREFIX}: {message}")

    def note_once(self, key: str, message: str) -> None:
        """``message`` as information, the first time ``key`` is seen."""
        if self.first(key):
            rank_zero_info(f"{PREFIX}: {message}.")

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; an exception becomes a warning naming ``what`` and the
        error, and the result is None."""
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - logging must never crash training
            self.warn(f"{what} failed: {type(error).__name__}: {error}")
            return None
