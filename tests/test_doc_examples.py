"""Every ```python block of README.md and docs/*.md runs on the digits data, and a block that
trains ends within 2 points of validation accuracy of the same code run without the monitor.

The blocks are read from the files at test time. Each runs in a fresh namespace holding this
prelude (the names the examples use without defining them)::

    import lightning.pytorch as pl
    from svd_callback.examples import DigitsDataModule, SmallCNN
    model = SmallCNN()
    datamodule = DigitsDataModule()

after ``seed_everything(0)``. ``lightning.pytorch.Trainer`` is replaced by a subclass that
writes into a temporary directory without progress bars and remembers each trainer. The
baseline run of a block is the same block with the ``svd_callback`` callbacks (and the
callbacks that monitor their tags, such as ``EarlyStopping(monitor="alerts/active")``) taken out
of every Trainer. A monitored run that ends more than 2 points lower must have been stopped by
an alert that gives its reason. A block whose first line is ``# not run: <reason>`` is skipped;
:data:`OPTED_OUT` lists them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"#\s*not run:\s*(\S.*)")
MONITOR_TAGS = ("spectral/", "all_layers/", "alerts/", "classes/", "spectra/")
TOLERANCE = 0.02
OPTED_OUT: dict[str, str] = {}
"""``file:line`` -> the reason its first line gives, for the blocks that are not run."""


def _blocks() -> list[tuple[str, str]]:
    found = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            name = f"{path.relative_to(REPO)}:{line}"
            code = match.group(1)
            reason = NOT_RUN.match(code.splitlines()[0]) if code.strip() else None
            if reason:
                OPTED_OUT[name] = reason.group(1)
            else:
                found.append((name, code))
    return found


BLOCKS = _blocks()


def _of_the_monitor(callback: Any) -> bool:
    """A callback of the package, or one that monitors a tag only the monitor logs."""
    if type(callback).__module__.startswith("svd_callback"):
        return True
    watched = getattr(callback, "monitor", None)
    return isinstance(watched, str) and watched.startswith(MONITOR_TAGS)


def _run(code: str, root: Path, monkeypatch: pytest.MonkeyPatch, *, monitored: bool
         ) -> list[pl.Trainer]:
    """Execute one block with the prelude; return the trainers it built."""
    built: list[pl.Trainer] = []

    class Trainer(pl.Trainer):
        def __init__(self, *args: Any, callbacks: Any = None, **kwargs: Any) -> None:
            callbacks = list(callbacks or [])
            if not monitored:
                callbacks = [c for c in callbacks if not _of_the_monitor(c)]
            kwargs.setdefault("default_root_dir", str(root))
            kwargs.setdefault("enable_progress_bar", False)
            kwargs.setdefault("enable_model_summary", False)
            kwargs.setdefault("accelerator", "cpu")
            kwargs.setdefault("devices", 1)
            super().__init__(*args, callbacks=callbacks, **kwargs)
            built.append(self)

    monkeypatch.setattr(pl, "Trainer", Trainer)
    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(root)
    pl.seed_everything(0, verbose=False)
    from svd_callback.examples import DigitsDataModule, SmallCNN

    namespace: dict[str, Any] = {"__name__": "__doc_example__", "pl": pl, "model": SmallCNN(),
                                 "datamodule": DigitsDataModule()}
    exec(compile(code, "<doc example>", "exec"), namespace)
    return built


def _val_acc(trainer: pl.Trainer) -> float | None:
    value = trainer.callback_metrics.get("val_acc")
    return None if value is None else float(value)


def _stop_reasons(trainer: pl.Trainer) -> list[str]:
    """The messages of the monitor's alerts when the run ended before ``max_epochs``."""
    from svd_callback import SpectralMonitor

    if trainer.current_epoch >= (trainer.max_epochs or 0):
        return []
    return [alert.message for cb in trainer.callbacks if isinstance(cb, SpectralMonitor)
            for alert in cb.alert_engine.alerts_so_far if alert.message]


def test_the_docs_hold_examples_and_say_why_any_is_not_run():
    assert any(name.startswith("README.md") for name, _ in BLOCKS)
    assert all(reason.strip() for reason in OPTED_OUT.values())
    print("not run:", OPTED_OUT or "none")


@pytest.mark.parametrize("name,code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_example_runs_and_trains_as_well_as_without_the_monitor(name, code, tmp_path,
                                                               monkeypatch):
    trainers = _run(code, tmp_path / "monitored", monkeypatch, monitored=True)
    fitted = [t for t in trainers if _val_acc(t) is not None]
    if not fitted:
        return  # an example that does not train: it ran without an error
    baseline = _run(code, tmp_path / "baseline", monkeypatch, monitored=False)
    for with_monitor, without in zip(fitted, [t for t in baseline if _val_acc(t) is not None],
                                     strict=True):
        acc, reference = _val_acc(with_monitor), _val_acc(without)
        assert reference is not None and acc is not None
        print(f"{name}: val_acc {acc:.3f} at epoch {with_monitor.current_epoch}, "
              f"{reference:.3f} at epoch {without.current_epoch} without the monitor")
        if acc < reference - TOLERANCE:
            reasons = _stop_reasons(with_monitor)
            assert reasons, (f"{name}: val_acc {acc:.3f} at epoch {with_monitor.current_epoch}"
                             f" against {reference:.3f} without the monitor, no alert said why")


def test_the_guide_links_resolve_and_its_screenshots_are_small():
    images = []
    for path in (REPO / "README.md", REPO / "docs" / "guide.md"):
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+\.(?:md|png))(?:#[^)]*)?\)", text):
            assert (path.parent / target).is_file(), f"{path.name} links to missing {target}"
            images += [path.parent / target] if target.endswith(".png") else []
    assert len(images) >= 4  # the TensorBoard screenshots of the guide
    for image in images:
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
        assert image.stat().st_size < 300_000, image
