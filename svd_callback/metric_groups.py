"""The metric groups a user selects, and the metrics each group computes.

A group is the unit of choice in ``SpectralMonitor(metrics=...)`` and ``analyze(metrics=...)``:
``"norms"`` (norms, stable rank, entropy, numerical rank), ``"powerlaw"`` (the power-law fit of
the ESD tail and the metrics derived from alpha), ``"mp"`` (the Marchenko-Pastur bulk fit),
``"traps"`` (correlation traps from an entry-shuffled copy of each weight) and ``"motion"`` (how
far each weight moved since the previous and the first analysis, :mod:`svd_callback.motion`: the
callback computes it, as it needs the earlier weights); ``"all"`` selects every group.
:class:`svd_callback.config.AnalysisConfig` expands a selection with
:func:`expand_metric_groups`; the sinks read :data:`METRIC_GROUPS` to know which metrics to log.
"""

from __future__ import annotations

from collections.abc import Sequence

from svd_callback.checks import check_selection
from svd_callback.motion import MOTION_METRICS

__all__ = ["ALL_GROUPS", "METRIC_GROUPS", "expand_metric_groups"]

ALL_GROUPS = "all"
"""The selection that stands for every group of :data:`METRIC_GROUPS`, in its order."""

METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "norms": (
        "log_norm",
        "log_spectral_norm",
        "spectral_norm",
        "frobenius_norm",
        "stable_rank",
        "entropy",
        "matrix_rank",
        "rank_loss",
    ),
    "powerlaw": (
        "alpha",
        "xmin",
        "D",
        "alpha_sigma",
        "n_tail",
        "alpha_hill",
        "alpha_weighted",
        "log_alpha_norm",
    ),
    "mp": ("mp_softrank", "num_spikes", "lambda_plus", "mp_s2", "sigma_mp"),
    "traps": ("num_traps", "trap_max", "rand_distance", "rand_distance_ww"),
    "motion": MOTION_METRICS,
}
"""Group name -> the per-layer metrics it computes and logs, in logging order."""


def expand_metric_groups(
    selection: str | Sequence[str], option: str = "metrics"
) -> tuple[str, ...]:
    """Validate a selection of groups and expand it: ``"all"`` becomes every group, duplicates
    are dropped, the first occurrence keeps its place.

    Raises:
        ValueError: on an empty selection, a value that is neither a string nor a sequence, a
            non-string entry or an unknown name (every entry is
            checked, ``"all"`` included: ``("all", "typo")`` raises), naming ``option``, the bad
            value and the valid names.
    """
    groups = check_selection(option, selection, (*METRIC_GROUPS, ALL_GROUPS), "metric group")
    return tuple(METRIC_GROUPS) if ALL_GROUPS in groups else groups
