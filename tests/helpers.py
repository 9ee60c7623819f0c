"""Helpers shared by several test files (imported as ``helpers``: pytest puts ``tests/`` on the
path of these rootless test modules, and a test file run as a script has it as its folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys: Any, *argv: Any) -> tuple[int, str, str]:
    """``svd-callback`` on ``argv`` (each turned into a string): (exit code, stdout, stderr)."""
    from svd_callback.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def digits_fit(
    root: Path,
    callbacks: Any = (),
    model: Any = None,
    *,
    max_epochs: int = 2,
    seed: int = 0,
    logger: Any = False,
    ckpt_path: Any = None,
    datamodule: pl.LightningDataModule | None = None,
    batch_size: int = 64,
    quiet: bool = False,
    **trainer_options: Any,
) -> tuple[pl.Trainer, pl.LightningModule]:
    """A seeded digits fit on the CPU; returns (trainer, model).

    ``model``: a LightningModule, or a factory called after seeding (None: ``SmallCNN()``);
    ``datamodule``: None for ``DigitsDataModule(batch_size)``; ``quiet``: hide the warnings;
    ``trainer_options`` override the Trainer's settings (no progress bar, summary or
    checkpointing here).
    """
    from svd_callback.examples import DigitsDataModule, SmallCNN

    pl.seed_everything(seed, verbose=False)
    if callable(model) and not isinstance(model, pl.LightningModule):
        model = model()
    module = model if model is not None else SmallCNN()
    settings = dict(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=logger,
        callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=root,
    )
    settings.update(trainer_options)
    trainer = pl.Trainer(**settings)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        trainer.fit(module, datamodule or DigitsDataModule(batch_size=batch_size),
                    ckpt_path=ckpt_path)
    return trainer, module


def run_script_in_own_group(script: str | Path, out: Path, timeout: float = 180) -> None:
    """Run ``python <script> <out>`` from the repository root in its own process group (one
    thread per process, warnings off); the whole group is killed after ``timeout`` seconds.

    Raises:
        AssertionError: on a timeout or a non-zero exit status (with the end of stderr).
    """
    import pytest

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(out)], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{Path(script).name} did not return within {timeout:g} s")
    assert process.returncode == 0, stderr[-3000:]
