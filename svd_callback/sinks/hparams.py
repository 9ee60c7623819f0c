"""The monitor's settings, the model's hyperparameters and the run's final metrics in
TensorBoard's HPARAMS tab.

TensorBoard's hparams plugin treats every run holding a ``_hparams_/session_start_info`` tag as
a session, takes the hyperparameter columns and metric names from an ``_hparams_/experiment``
tag (of the first run that has one) and reads a metric's value as the last point of the scalar
series with the metric's tag in the session's run. It shows the first five columns of each
kind: hyperparameters marked ``differs`` first (then by name), metrics in the record's order.
So the record marks the settings changed from their defaults (:func:`changed_settings`) and
lists the metrics a reader wants first (the caller's list,
:func:`svd_callback.monitor.scalars.hparam_metrics`: ``alerts/active``, the model's validation
metrics, ...), each with its description. The records are written straight to the event file
(:meth:`svd_callback.sinks.tensorboard.TensorBoardSink.summaries`), so that no scalar point is
added; TensorBoard keeps the first record of a run.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Mapping, Sequence
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


def constructor_defaults(*classes: type | None) -> dict[str, HParam]:
    """The default values of the ``__init__`` parameters of ``classes`` (a LightningModule,
    a DataModule), flattened as :func:`model_hparams` names them; parameters without a default
    are left out."""
    defaults: dict[str, Any] = {}
    for cls in classes:
        if cls is None:
            continue
        try:
            parameters = inspect.signature(cls.__init__).parameters.values()
        except (TypeError, ValueError):  # a C type or an odd callable: nothing known
            continue
        defaults.update({p.name: p.default for p in parameters
                         if p.default is not inspect.Parameter.empty
                         and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)})
    return _flatten(defaults, "")


def changed_settings(values: Mapping[str, HParam], defaults: Mapping[str, HParam]) -> set[str]:
    """The names of ``values`` whose value is not their default (or that have none)."""
    return {name for name, value in values.items()
            if name not in defaults or defaults[name] != value}


def hparams_summaries(
    hparams: Mapping[str, HParam],
    metrics: Sequence[tuple[str, str]] | Iterable[str],
    changed: Iterable[str] = (),
) -> list[Any]:
    """The experiment and session-start records (``Summary`` protos) of the HPARAMS tab:
    ``hparams`` as the columns (those in ``changed`` marked ``differs``, which TensorBoard
    shows first), ``metrics`` (tags, or (tag, description) pairs) in their order."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams as hparams_records

    pairs = [(m, "") if isinstance(m, str) else (str(m[0]), str(m[1])) for m in metrics]
    experiment, start, _ = hparams_records(dict(hparams), dict.fromkeys(
        [tag for tag, _ in pairs], 0.0))
    value = experiment.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    changed = set(changed)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in changed
    for info, (_, description) in zip(data.experiment.metric_infos, pairs, strict=True):
        info.description = description
    value.metadata.plugin_data.content = data.SerializeToString()
    return [experiment, start]
