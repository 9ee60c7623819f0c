"""Screenshots of a healthy and a broken digits run in TensorBoard, as a new user sees them.

Trains ``SmallCNN`` on scikit-learn's digits twice with :class:`svd_callback.SpectralMonitor`
(Adam, lr 3e-3: healthy, about 0.94 validation accuracy; lr 0.1: the spectral norms blow up,
the ReLUs die and the net stops learning), serves both runs with ``tensorboard --logdir`` on a
free local port, and takes headless-Chromium screenshots of its dashboards at TensorBoard's
default settings (a fresh browser profile each time, so no smoothing, outlier or run selection
is remembered)::

    PYTHONPATH=$PWD .venv/bin/python scripts/tensorboard_screenshots.py --out /tmp/tb_shots
    PYTHONPATH=$PWD .venv/bin/python scripts/tensorboard_screenshots.py --out /tmp/tb_shots \
        --skip-training          # new screenshots of the runs trained before
    PYTHONPATH=$PWD .venv/bin/python scripts/tensorboard_screenshots.py --out /tmp/demo_shots \
        --logdir /tmp/demo_runs       # screenshots of any log directory (e.g. the demo's)

Needs Debian's ``chromium`` (``apt-get install -y chromium``; ``--chromium`` names another
binary). Writes ``<out>/runs/{healthy,broken}`` and ``<out>/<dashboard>.png``; ``--docs`` also
writes the palette-reduced copies used by ``docs/guide.md`` into ``docs/images/``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

RUNS = {"healthy": 3e-3, "broken": 0.1}
"""Run name -> Adam learning rate of ``SmallCNN`` on digits."""
EPOCHS = 8
SEED = 0
DASHBOARDS = {
    # name -> the address after http://host:port/ (TensorBoard's own routes)
    "timeseries": "#timeseries",
    "scalars": "#scalars",
    "custom_scalars": "#custom_scalars",
    "text": "#text",
    "hparams": "#hparams",
    "images": "#images",
}
SIZES = {"hparams": "1900,560"}
"""Window sizes other than ``--size``: the HPARAMS table is wide (its metric columns come after
the settings)."""
DOCS_IMAGES = {  # screenshot -> docs/images file (used by docs/guide.md)
    "timeseries": "tensorboard_timeseries.png",
    "custom_scalars": "tensorboard_custom_scalars.png",
    "text": "tensorboard_text.png",
    "hparams": "tensorboard_hparams.png",
}
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--no-first-run",
    "--force-device-scale-factor=1", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
)
"""The flags of every run; SwiftShader draws the WebGL charts of Time Series without a GPU."""


def train(root: Path, epochs: int = EPOCHS, seed: int = SEED) -> None:
    """One TensorBoard run per entry of :data:`RUNS` under ``root`` (``root/<name>``)."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    from svd_callback import SpectralMonitor
    from svd_callback.examples import DigitsDataModule, SmallCNN

    torch.set_num_threads(1)
    for name, lr in RUNS.items():
        shutil.rmtree(root / name, ignore_errors=True)
        pl.seed_everything(seed, workers=True, verbose=False)
        trainer = pl.Trainer(
            max_epochs=epochs, logger=TensorBoardLogger(str(root), name=name, version=""),
            callbacks=[SpectralMonitor()], accelerator="cpu", devices=1,
            deterministic=True, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=False, log_every_n_steps=5,
        )
        trainer.fit(SmallCNN(lr=lr), datamodule=DigitsDataModule())
        acc = trainer.callback_metrics.get("val_acc")
        print(f"{name}: lr {lr:g}, val_acc {float(acc) if acc is not None else float('nan'):.3f}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(logdir: Path, port: int, runs: Sequence[str] = tuple(RUNS)) -> subprocess.Popen:
    """``tensorboard --logdir`` on ``127.0.0.1:port``; returns once it lists ``runs`` (empty:
    any run)."""
    exe = Path(sys.executable).with_name("tensorboard")
    command = [str(exe) if exe.exists() else "tensorboard", "--logdir", str(logdir),
               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as r:
                listed = set(json.load(r))
                if listed and set(runs) <= listed:
                    time.sleep(3)  # let every plugin read the runs' events
                    return process
        except OSError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"TensorBoard did not list the runs {sorted(runs)} within 120 s")


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    NUL-terminated JSON messages on file descriptors 3 and 4), so that a page gets real time to
    fetch and draw its charts (TensorBoard draws in web workers, which ``--virtual-time-budget``
    does not wait for). A fresh profile: TensorBoard's default settings."""

    def __init__(self, chromium: str, size: str) -> None:
        self._profile = tempfile.TemporaryDirectory()
        to_chrome, self._send_fd = os.pipe()
        self._recv_fd, from_chrome = os.pipe()

        def pipes() -> None:  # in the child: its fd 3 reads, fd 4 writes
            read, write = os.dup(to_chrome), os.dup(from_chrome)  # above 4: no clash
            os.dup2(read, 3)
            os.dup2(write, 4)

        self._process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, "--remote-debugging-pipe",
             f"--user-data-dir={self._profile.name}", f"--window-size={size}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pipes,
            pass_fds=(3, 4))
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._id = 0

    def call(self, method: str, session: str | None = None, **params: object) -> dict:
        """Send one command and return its result (events in between are dropped)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._recv_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def screenshot(self, url: str, path: Path, seconds: float, width: int, height: int) -> None:
        """Open ``url`` in a new tab of ``width`` x ``height`` pixels, wait ``seconds``, save
        the visible page as PNG."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.enable", session)
        self.call("Page.navigate", session, url=url)
        time.sleep(seconds)
        data = self.call("Page.captureScreenshot", session, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        self.call("Target.closeTarget", targetId=target)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.call("Browser.close")
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
        os.close(self._send_fd)
        os.close(self._recv_fd)
        self._profile.cleanup()


def shrink(source: Path, target: Path, colours: int = 64) -> None:
    """``source`` as a palette PNG of ``colours`` colours (a TensorBoard page stays readable
    and the file small)."""
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").quantize(colours, dither=Image.Dither.NONE).save(
            target, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tb_shots"),
                        help="folder for the runs and the screenshots (default /tmp/tb_shots)")
    parser.add_argument("--skip-training", action="store_true",
                        help="use the runs already under OUT/runs")
    parser.add_argument("--logdir", type=Path, default=None,
                        help="shoot this log directory instead (no training)")
    parser.add_argument("--chromium", default="chromium", help="browser binary (chromium)")
    parser.add_argument("--size", default=None,
                        help="browser window WIDTH,HEIGHT in pixels (default 1400,1000; "
                        "HPARAMS 1900,560)")
    parser.add_argument("--wait", type=float, default=12.0,
                        help="seconds each page gets to load and draw its data (12)")
    parser.add_argument("--only", nargs="*", choices=sorted(DASHBOARDS),
                        help="dashboards to shoot (default: all)")
    parser.add_argument("--docs", action="store_true",
                        help="also write the reduced copies into docs/images/")
    args = parser.parse_args(argv)
    if shutil.which(args.chromium) is None:
        parser.error(f"{args.chromium!r} not found (apt-get install -y chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.logdir or args.out / "runs"
    if not args.skip_training and args.logdir is None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        train(runs)
    port = free_port()
    server = serve(runs, port, () if args.logdir else tuple(RUNS))
    browser = Browser(args.chromium, args.size or "1400,1000")
    try:
        for name in args.only or DASHBOARDS:
            path = args.out / f"{name}.png"
            size = args.size or SIZES.get(name, "1400,1000")
            width, height = (int(v) for v in size.split(","))
            browser.screenshot(f"http://127.0.0.1:{port}/{DASHBOARDS[name]}", path, args.wait,
                               width, height)
            print(f"wrote {path}")
            if args.docs and name in DOCS_IMAGES:
                target = Path(__file__).resolve().parents[1] / "docs" / "images"
                shrink(path, target / DOCS_IMAGES[name])
                print(f"wrote {target / DOCS_IMAGES[name]}")
    finally:
        browser.close()
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
