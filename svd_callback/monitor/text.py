"""The markdown the callback writes to TensorBoard: the conventions of the run, and the reader
of its primary mode (:func:`primary_mode_in`, for runs read back from their event files)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from svd_callback.config import MonitorConfig
from svd_callback.monitor.scalars import logged_metric_names
from svd_callback.sinks import tags
from svd_callback.sinks.tags import escape_markdown

__all__ = ["conventions_markdown", "primary_mode_in", "schedule_text"]

PRIMARY_MARK = " (primary)"
"""Written after the primary mode's name, ``- **unfold** (primary): ...``."""
_PRIMARY_IN_TEXT = re.compile(r"\*\*(\w+)\*\*" + re.escape(PRIMARY_MARK))


def primary_mode_in(texts: Iterable[str]) -> str | None:
    """The mode marked primary in a ``spectral/conventions`` text of
    :func:`conventions_markdown` (None: not found)."""
    for text in texts:
        found = _PRIMARY_IN_TEXT.search(text)
        if found:
            return found.group(1)
    return None


def schedule_text(config: MonitorConfig, check_on: str | None) -> str:
    """The schedule in words, e.g. ``initial weights at step 0, every 1 epoch(s) at
    train_epoch_end``."""
    parts = []
    if config.log_init:
        parts.append("initial weights at step 0")
    if config.every_n_epochs:
        parts.append(f"every {config.every_n_epochs} epoch(s) at {check_on}")
    if config.every_n_steps:
        parts.append(f"every {config.every_n_steps} steps")
    return ", ".join(parts) or "never"


def conventions_markdown(
    config: MonitorConfig, check_on: str | None, history_path: str | None, class_text: str
) -> str:
    """The ``spectral/conventions`` text: per mode its tags and conventions, the metric groups,
    the aggregates, the schedule, the history file and the class statistics."""
    analysis = config.analysis
    primary = analysis.primary_mode
    lines = ["**Spectral metrics of this run** (svd-callback `SpectralMonitor`)", ""]
    for mode in analysis.conv_mode:
        where = ("`spectral/<metric>/<layer>`" if mode == primary
                 else f"`spectral/<metric>.{mode}/<layer>`")
        how = tags.conventions(mode, analysis.normalization, analysis.fit, analysis.ww_compat)
        primary_note = PRIMARY_MARK if mode == primary else ""
        lines.append(f"- **{mode}**{primary_note}: {where}; {escape_markdown(how, table=True)}")
    lines += [
        "",
        f"- metric groups: {', '.join(analysis.metrics)}; logged: "
        f"{escape_markdown(', '.join(logged_metric_names(config)), table=True)}",
        f"- aggregates: `all_layers/<metric>_{'|_'.join(config.summary_stats)}"
        "[.<mode>]` over analysed layers; layers that are not convolutions are logged under "
        "the primary mode only; histograms `spectra/<mode>/<layer>` hold log10 of the raw "
        "singular values",
        f"- schedule: {schedule_text(config, check_on)}; step = trainer.global_step",
        f"- history file: `{history_path or 'disabled'}`",
    ]
    if class_text:
        lines.append("- class statistics `classes/<stat>/<layer>`: "
                     f"{escape_markdown(class_text, table=True)}")
    return "\n".join(lines)
