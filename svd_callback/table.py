"""Fixed-width text tables of a report's per-layer records (``analyze`` and ``demo`` output)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

TABLE_COLUMNS = ["layer", "kind", "mode", "shape", "spectral_norm", "stable_rank", "alpha",
                 "alpha_sigma", "D", "alpha_weighted", "quality", "reason"]
"""The columns ``svd-callback analyze`` prints."""

SUMMARY_COLUMNS = TABLE_COLUMNS[:-1]
"""The demo's columns: the same without the reason (printed below the table instead)."""


def format_table(frame: pd.DataFrame, columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A compact fixed-width table of the columns of ``frame`` named in ``columns``."""
    shown = [c for c in columns if c in frame.columns]
    return frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}",
                                  na_rep="nan", max_colwidth=60)
