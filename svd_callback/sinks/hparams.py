"""The monitor's settings and its final summary metrics in TensorBoard's HPARAMS tab.

TensorBoard's hparams plugin treats every run holding a ``_hparams_/session_start_info`` tag as
a session, takes the hyperparameter columns and metric names from an ``_hparams_/experiment``
tag (the first run that has one) and reads a metric's value as the last point of the scalar
series with the metric's tag in the session's run. The records are written with
``torch.utils.tensorboard.summary.hparams`` straight to the event file
(:meth:`svd_callback.sinks.tensorboard.TensorBoardSink.summaries`), with the
existing ``spectral_summary/*`` and ``alerts/total`` tags as metrics (the caller's list,
:func:`svd_callback.monitor.scalars.hparam_tags`), so that no scalar point is
added (``TensorBoardLogger.log_hyperparams(params, metrics)`` would write the metric values at
step 0). The loaders keep the first metadata of a tag per run: written at ``on_fit_start``,
before Lightning logs the model's ``save_hyperparameters()``, these records, which hold the
model's hyperparameters too, are the ones TensorBoard shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from svd_callback.config import MonitorConfig

PREFIX = "svd/"
"""Prefix of the monitor's hyperparameter names (apart from the model's own)."""

HParam = str | float | int | bool


def _value(value: Any) -> HParam:
    """A value the hparams plugin accepts: numbers and booleans as they are, ``None`` as
    ``"none"``, sequences joined by commas, anything else as its ``str``."""
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(str(_value(v)) for v in value)
    return str(value)


def _flatten(values: Mapping[str, Any], prefix: str) -> dict[str, HParam]:
    flat: dict[str, HParam] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = _value(value)
    return flat


def monitor_hparams(config: MonitorConfig) -> dict[str, HParam]:
    """The resolved settings as ``svd/<field>`` (``svd/analysis/<field>`` for the analysis
    settings, e.g. ``svd/analysis/conv_mode = "unfold"``)."""
    return _flatten(dataclasses.asdict(config), PREFIX)


def model_hparams(*sources: Mapping[str, Any] | None) -> dict[str, HParam]:
    """The hyperparameters of the LightningModule / DataModule (``save_hyperparameters()``),
    nested dictionaries flattened with ``/``, as Lightning's TensorBoard logger names them."""
    flat: dict[str, HParam] = {}
    for source in sources:
        if source:
            flat.update(_flatten(dict(source), ""))
    return flat


def hparams_summaries(hparams: Mapping[str, HParam], metrics: list[str]) -> list[Any]:
    """The experiment and session-start records (``Summary`` protos) of the HPARAMS tab."""
    from torch.utils.tensorboard.summary import hparams as hparams_records

    experiment, start, _ = hparams_records(dict(hparams), dict.fromkeys(metrics, 0.0))
    return [experiment, start]
