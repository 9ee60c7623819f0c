"""Train one zoo run with :class:`~svd_callback.SpectralMonitor` (library defaults, alerts never
stopping the run) and cache its per-epoch losses and its spectral history in one gzipped JSON
file, so that scoring a rule set later is a replay, not a retraining."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from experiments.alert_zoo.zoo import Kind, Pair, build_model
from experiments.common import EpochRecorder, machine_line, trainer_for
from svd_callback.callback import SpectralMonitor
from svd_callback.sinks.history import read_history

HISTORIES = Path(__file__).resolve().parent / "histories"


class StopAtNonFiniteLoss(Callback):
    """Ends a run after the first epoch whose mean training loss is not finite: its outcome is
    decided there, and further epochs of NaN arithmetic would only cost time. (This is part of
    the experiment, not a detector: every detector sees the same epochs.)"""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train_loss")
        if loss is not None and not math.isfinite(float(loss)):
            trainer.should_stop = True


def fingerprint(pair: Pair, kind: Kind, seed: int, epochs: int, data: dict[str, Any]) -> str:
    """A hash of everything that defines a run; a cached run with another one is retrained."""
    spec = {"pair": pair.name, "model": pair.model, "data": data, "kind": asdict(kind),
            "seed": seed, "epochs": epochs}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(root: Path, pair: Pair, kind: Kind, seed: int) -> Path:
    return root / pair.name / f"{kind.name}_seed{seed}.json.gz"


def load_cached(path: Path, expected: str | None = None) -> dict[str, Any] | None:
    """The cached record at ``path`` (None when missing or, with ``expected``, made for another
    run definition)."""
    if not path.exists():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        record = json.load(handle)
    if expected is not None and record.get("fingerprint") != expected:
        return None
    for row in record["epochs"]:
        for key, value in row.items():
            if value is None:
                row[key] = math.nan
    return record


def train_run(pair: Pair, kind: Kind, seed: int, *, root: Path = HISTORIES,
              epochs: int | None = None, data: dict[str, Any] | None = None,
              retrain: bool = False, data_root: str | None = None) -> tuple[dict[str, Any], bool]:
    """Train (or load from the cache in ``root``) one run, reading Fashion-MNIST from
    ``data_root`` (default: the Debian package's folder); returns (record, whether it was
    trained now rather than read from the cache). The record holds ``epochs`` (rows of
    :class:`~experiments.common.EpochRecorder`), ``history`` (the monitor's history rows),
    ``online_alerts``, ``seconds``, ``fingerprint``, ``machine``."""
    epochs = pair.epochs if epochs is None else epochs
    data = {**pair.data, **(data or {})}
    key = fingerprint(pair, kind, seed, epochs, data)
    path = cache_path(root, pair, kind, seed)
    cached = None if retrain else load_cached(path, key)
    if cached is not None:
        return cached, False
    pl.seed_everything(seed, workers=True, verbose=False)
    extra = {"root": data_root} if data_root and pair.name != "digits_cnn" else {}
    datamodule = replace(pair, data=data).datamodule(kind, seed, **extra)
    model = build_model(pair, kind)
    recorder = EpochRecorder()
    with tempfile.TemporaryDirectory() as tmp:
        history_file = str(Path(tmp) / "history.jsonl")
        monitor = SpectralMonitor(stop_on_alert=False, figures_every_n=0, histograms=False,
                                  history_file=history_file)
        trainer = trainer_for(epochs, [monitor, recorder, StopAtNonFiniteLoss()])
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        seconds = time.perf_counter() - started
        history = read_history(history_file)
    record = {
        "pair": pair.name, "kind": kind.name, "role": kind.role, "seed": seed,
        "epochs_planned": epochs, "fingerprint": key, "seconds": seconds,
        "machine": machine_line(), "epochs": recorder.rows, "history": history,
        "online_alerts": [a.to_dict() for a in monitor.alert_engine.alerts_so_far],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump(record, handle, default=_json_default)
    return load_cached(path), True  # NaN restored exactly as a cached run reads


def _json_default(value: Any) -> Any:
    return str(value)
