"""Helpers shared by several test files (imported as ``helpers``: pytest puts ``tests/`` on the
path of these rootless test modules, and a test file run as a script has it as its folder)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys: Any, *argv: Any) -> tuple[int, str, str]:
    """``svd-callback`` on ``argv`` (each turned into a string): (exit code, stdout, stderr)."""
    from svd_callback.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class DigitsClassifier(pl.LightningModule):
    """The steps of a test classifier of the digits: cross-entropy training, ``val_loss``
    logged, Adam at lr 3e-3. Subclasses give the layers and ``forward``."""

    def training_step(self, batch, batch_idx):  # noqa: D102
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):  # noqa: D102
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.Adam(self.parameters(), lr=3e-3)


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(port: int, path: str, body: dict | None = None):
    """GET (or, with ``body``, POST as JSON) ``http://127.0.0.1:<port><path>``; the decoded
    JSON answer."""
    import json
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read().decode())


@contextlib.contextmanager
def tensorboard_server(logdir: str | Path, ready: Callable[[int], bool], what: str,
                       timeout: float = 90):
    """A TensorBoard server on 127.0.0.1 (a free port) over ``logdir``, yielding its port once
    ``ready(port)`` is true; always stopped.

    Raises:
        pytest.fail: when the server exits or ``ready`` is not true within ``timeout`` seconds
            (the message names ``what`` was awaited).
    """
    import time

    import pytest

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
         "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready(port):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"TensorBoard did not serve {what} within {timeout:g} s")
            time.sleep(0.5)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def train_on_digits(model: Any, epochs: int = 3, lr: float = 3e-3) -> Any:
    """``model`` trained in place with Adam on all of scikit-learn's digits (8x8 images scaled to
    [0, 1], batches of 64 in file order), the seeded fixture of the WeightWatcher parity tests."""
    import torch
    from sklearn.datasets import load_digits
    from torch.nn import functional as F

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    return model


def ww_frame(model: Any, **options: Any):
    """WeightWatcher 0.7.7's ``analyze(**options)`` of ``model`` (its logging and warnings
    silenced)."""
    import logging

    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ww.WeightWatcher(model=model).analyze(**options)


def layout_of(metrics, modes, summary=(), class_stats=()):
    """The custom-scalar layout (a ``tensorboard.Layout`` proto) of a run that logged
    ``metrics`` of layer ``x`` in every mode of ``modes``, the aggregates ``summary`` of every
    mode and the class statistics ``class_stats``, through the typed scalars
    (:func:`svd_callback.monitor.scalars.layout_charts`)."""
    from svd_callback.config import AnalysisConfig, MonitorConfig
    from svd_callback.monitor import scalars as sc
    from svd_callback.sinks.tags import Family, Scalar

    config = MonitorConfig(AnalysisConfig(conv_mode=tuple(modes)))
    records = [Scalar(Family.LAYER, m, 1.0, "", chart=sc.layer_chart(m, mode, config, ["x"]),
                      layer="x", mode=mode) for m in metrics for mode in modes]
    records += [Scalar(Family.SUMMARY, k, 1.0, "", chart=sc.summary_chart(k, mode, config))
                for k in summary for mode in modes]
    records += [Scalar(Family.CLASSES, k, 1.0, "", chart=sc.class_chart(k), layer="x")
                for k in class_stats]
    charts = sc.layout_charts(records, config) | set(sc.ALERT_CHARTS)
    from svd_callback.sinks.layout import custom_scalar_layout

    return custom_scalar_layout(charts, sc.layout_sections(config))
