"""The README's main job: train a small CNN on scikit-learn's bundled digits with
:class:`~svd_callback.SpectralMonitor`, then print a per-layer summary and the alerts."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from svd_callback.analysis import analyze
from svd_callback.callback import SpectralMonitor
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.table import SUMMARY_COLUMNS, format_table


def run_demo(epochs: int = 8, root: str | Path = "runs", seed: int = 0,
             conv_modes: tuple[str, ...] = ("unfold",)) -> SpectralMonitor:
    """Train, monitor, summarise; returns the callback (its history holds every record)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    logger = TensorBoardLogger(str(root), name="demo")
    monitor = SpectralMonitor(conv_mode=conv_modes)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[monitor],
        accelerator="auto",
        devices=1,
        deterministic=True,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=5,
    )
    model = SmallCNN()
    start = time.perf_counter()
    trainer.fit(model, datamodule=DigitsDataModule())
    elapsed = time.perf_counter() - start

    metrics = trainer.callback_metrics
    val_acc = float(metrics["val_acc"]) if "val_acc" in metrics else float("nan")
    print(f"\ntrained {trainer.current_epoch} epochs in {elapsed:.1f} s; "
          f"validation accuracy {val_acc:.3f}")
    report = analyze(model, conv_modes, example_input=model.example_input_array)
    print("\nper-layer spectra after training (lambda = sigma^2, power-law fit with "
          "KS-optimal xmin):")
    print(format_table(report.to_dataframe(), SUMMARY_COLUMNS))
    for line in [*report.nan_reasons("alpha"), *report.quality_reasons()]:
        print(f"  {line}")
    alerts = monitor.alert_engine.alerts_so_far
    print(f"\nalerts: {len(alerts)}")
    for alert in alerts:
        print(f"  [{alert.severity}] {alert.message}")
    print(f"\nlogs: {logger.log_dir}")
    print(f"open TensorBoard with:  .venv/bin/tensorboard --logdir {root} --host 127.0.0.1\n"
          "then browse http://127.0.0.1:6006/?smoothing=0 (unsmoothed curves; first: "
          "alerts/active and the all_layers/ aggregates; TEXT: the alerts state; CUSTOM "
          "SCALARS: the same never smoothed, per-layer charts; IMAGES: figures)")
    return monitor
