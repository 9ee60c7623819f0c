"""What the monitor prints on the console: one line per message, never the source line that
issued it. Alerts go to the ``svd_callback`` logger (warning and stop alerts at WARNING, info
alerts at INFO), the monitor's own problems stay Python warnings issued at the first caller
outside the package, which Lightning's warning format prints on one line."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from helpers import digits_fit

import svd_callback
from svd_callback import SpectralMonitor
from svd_callback.alerts import Rule
from svd_callback.monitor import console
from svd_callback.monitor.guard import Guard
from svd_callback.sinks.tensorboard import TensorBoardSink

PACKAGE = Path(svd_callback.__file__).resolve().parent
FAST = dict(limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)


class FiresFrom(Rule):
    """A warning alert at every analysis from ``epoch`` on (planted, with meaning and advice)."""

    meaning = "a planted condition"
    advice = "nothing"

    def __init__(self, epoch: int) -> None:
        super().__init__(name="Planted")
        self.epoch = epoch

    def check(self, history, epoch, step):
        if epoch < self.epoch:
            return []
        return [self.make_alert(layer="fc", mode="unfold", epoch=epoch, step=step,
                                message=f"Planted: fc value 3 > 2 at epoch {epoch}")]


def test_a_guard_warning_points_at_the_first_caller_outside_the_package():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Guard().warn("writing failed")
    (warning,) = caught
    assert Path(warning.filename).resolve() == Path(__file__).resolve()
    assert str(warning.message) == "SpectralMonitor: writing failed; training continues."


def test_in_a_fit_warnings_are_one_line_and_alerts_are_logged(tmp_path, monkeypatch, caplog):
    from lightning.pytorch.loggers import TensorBoardLogger

    def broken_histogram(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(TensorBoardSink, "histogram", broken_histogram)
    monitor = SpectralMonitor(alert_rules=[FiresFrom(1)], figures_every_n=0, history_file=None)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        digits_fit(tmp_path, [monitor], max_epochs=2,
                   logger=TensorBoardLogger(str(tmp_path), name="run", version=0), **FAST)
    ours = [w for w in caught if "SpectralMonitor" in str(w.message)]
    assert any("disk full" in str(w.message) for w in ours)
    for w in ours:  # issued outside the package; printed as one line, no echoed source
        assert not Path(w.filename).resolve().is_relative_to(PACKAGE), w.filename
        text = warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
        assert text.count("\n") == 1, text
    assert not [w for w in caught if "SpectralMonitor alert" in str(w.message)]
    alerts = [r for r in caplog.records if "SpectralMonitor alert" in r.getMessage()]
    assert [(r.name, r.levelno) for r in alerts] == [(console.LOGGER_NAME, logging.WARNING)] * 2
    assert "\n" not in alerts[0].getMessage()
    assert "Planted: fc value 3 > 2 at epoch 1" in alerts[0].getMessage()
