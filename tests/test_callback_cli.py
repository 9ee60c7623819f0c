"""The LightningCLI configs attach SpectralMonitor to the example models and train."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from svd_callback.callback import SpectralMonitor
from svd_callback.sinks.history import read_history

ROOT = Path(__file__).resolve().parents[1]


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "experiments" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_config(config: str, tmp_path: Path, *extra: str, renamed: dict[str, str] | None = None):
    """Parse the config as the command line would, then fit without figures (drawing them is
    tested elsewhere and costs seconds)."""
    settings = yaml.safe_load((ROOT / "configs" / config).read_text())
    (monitor,) = [c for c in settings["trainer"]["callbacks"]
                  if c["class_path"].endswith("SpectralMonitor")]
    monitor["init_args"]["figures_every_n"] = 0
    for new, old in (renamed or {}).items():  # write an option under another (older) name
        monitor["init_args"][old] = monitor["init_args"].pop(new)
    path = tmp_path / config
    path.write_text(yaml.safe_dump(settings))
    args = [
        "--config", str(path),
        "--trainer.max_epochs=2", "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}", *extra,
    ]
    cli = load_train_script().main(args, run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


def monitor_of(cli) -> SpectralMonitor:
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, SpectralMonitor)]
    return monitor


def test_digits_config_trains_with_the_monitor(tmp_path):
    cli = run_config("digits_cnn.yaml", tmp_path)
    monitor = monitor_of(cli)
    assert monitor.config.analysis.conv_mode == ("unfold", "operator")
    assert monitor.schedule.check_on == "train_epoch_end" and monitor.config.figures_every_n == 0
    assert [e["step"] for e in monitor.summaries] == [0, 3, 6]
    history = Path(cli.trainer.logger.log_dir) / "spectral_history.jsonl"
    modes = {r["mode"] for r in read_history(history) if r["type"] == "layer"}
    assert modes == {"unfold", "operator"}


def test_a_config_with_the_legacy_names_still_trains_with_a_deprecation_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"conv_modes=\.\.\.\) is deprecated"):
        cli = run_config("digits_cnn.yaml", tmp_path,
                         renamed={"conv_mode": "conv_modes", "check_on": "on"})
    monitor = monitor_of(cli)
    assert monitor.config.analysis.conv_mode == ("unfold", "operator")
    assert monitor.schedule.check_on == "train_epoch_end" and len(monitor.summaries) == 3


def write_idx(path: Path, array: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_config_takes_a_data_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "fashion"
    root.mkdir()
    for split, n in (("train", 120), ("t10k", 60)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    cli = run_config(
        "fashion_mnist_cnn.yaml", tmp_path, f"--data.init_args.root={root}",
        "--data.init_args.train_size=100", "--data.init_args.val_size=50",
        "--data.init_args.batch_size=16",
    )
    monitor = monitor_of(cli)
    assert monitor.config.analysis.conv_mode == ("unfold", "operator", "slices")
    assert monitor.input_sizes == {"features.0": (28, 28), "features.2": (28, 28),
                                    "features.5": (14, 14)}
    assert len(monitor.summaries) == 3
