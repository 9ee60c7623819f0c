"""Checks of single option values, each raising ``ValueError`` that names the option, the value
given and what is valid.

:mod:`svd_callback.config` and :mod:`svd_callback.schedule` validate their options with these;
the callback checks its remaining arguments (alert rules, callables, class-analysis options)
with them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "as_tuple",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_count",
    "check_figure_layers",
    "check_input_size",
    "check_int",
    "check_patterns",
    "listing",
]


def listing(values: Sequence[Any]) -> str:
    """``'a', 'b'``: the values as a user types them, for error messages."""
    return ", ".join(repr(v) for v in values)


def check_callable(option: str, value: Any) -> Any:
    """``value`` if it is callable or None."""
    if value is not None and not callable(value):
        raise ValueError(f"{option} must be callable or None, got {value!r}")
    return value


def check_choice(option: str, value: Any, valid: Sequence[str], none_ok: bool = False) -> Any:
    """``value`` if it is one of ``valid`` (or None with ``none_ok``)."""
    if value is None and none_ok:
        return None
    if not isinstance(value, str) or value not in valid:
        extra = " or None" if none_ok else ""
        raise ValueError(f"{option} must be one of {listing(valid)}{extra}, got {value!r}")
    return value


def check_bool(option: str, value: Any) -> bool:
    """``value`` if it is a bool (a string such as ``"false"`` is refused, not read as true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{option} must be True or False, got {value!r}")
    return value


def check_int(option: str, value: Any) -> int:
    """``value`` if it is an int (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{option} must be an integer, got {value!r}")
    return value


def check_count(option: str, value: Any, minimum: int = 0, none_ok: bool = True) -> int | None:
    """``value`` if it is an int >= ``minimum`` (not a bool), or None with ``none_ok``."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if none_ok else ""
        raise ValueError(f"{option} must be an integer >= {minimum}{extra}, got {value!r}")
    return value


def as_tuple(option: str, value: Any) -> tuple[Any, ...]:
    """A sequence as a tuple; sets and other unordered or scalar values are refused."""
    if not isinstance(value, Sequence):  # no sets: the order matters (first = primary mode)
        raise ValueError(f"{option} must be a string or a sequence of strings, got {value!r}")
    return tuple(value)


def check_selection(
    option: str, selection: Any, valid: Sequence[str], noun: str
) -> tuple[str, ...]:
    """One name of ``valid`` or several, as a tuple without repeats (first occurrence first).

    Raises:
        ValueError: on an empty selection (``noun`` names what one entry is), a value that is
            neither a string nor a sequence, or an entry not in ``valid``, listing ``valid``.
    """
    items = (selection,) if isinstance(selection, str) else as_tuple(option, selection)
    if not items:
        raise ValueError(
            f"{option} must name at least one {noun} of {listing(valid)}, got an empty selection"
        )
    for item in items:
        if not isinstance(item, str) or item not in valid:
            raise ValueError(f"{option} must be among {listing(valid)}, got {item!r}")
    return tuple(dict.fromkeys(items))


def check_patterns(option: str, patterns: Any) -> tuple[str, ...] | None:
    """One glob pattern or several, as a tuple of non-empty strings (None stays None)."""
    if patterns is None:
        return None
    items = (patterns,) if isinstance(patterns, str) else as_tuple(option, patterns)
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{option} must hold non-empty glob patterns, got {item!r}")
    return items


def check_input_size(input_size: Any) -> int | tuple[int, ...] | None:
    """A positive int, or positive ints (one per spatial dimension) as a tuple; None."""
    if input_size is None:
        return None
    is_int = isinstance(input_size, int) and not isinstance(input_size, bool)
    values = (input_size,) if is_int else (
        tuple(input_size) if isinstance(input_size, Sequence) and not isinstance(input_size, str)
        else ()
    )
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"input_size must be positive integer(s), got {input_size!r}")
    return input_size if is_int else values


def check_figure_layers(figure_layers: Any) -> int | tuple[str, ...]:
    """A count >= 0, or layer names (one or several, duplicates dropped) as a tuple."""
    if isinstance(figure_layers, int) and not isinstance(figure_layers, bool):
        if figure_layers < 0:
            raise ValueError(f"figure_layers must be a count >= 0 or layer names, got "
                             f"{figure_layers!r}")
        return figure_layers
    if isinstance(figure_layers, str):
        figure_layers = (figure_layers,)
    if (
        isinstance(figure_layers, bool)
        or not isinstance(figure_layers, Sequence)
        or any(not isinstance(n, str) or not n for n in figure_layers)
    ):
        raise ValueError(f"figure_layers must be a count >= 0 or layer names, got "
                         f"{figure_layers!r}")
    return tuple(dict.fromkeys(figure_layers))
