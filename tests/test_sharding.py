"""Sharded strategies: the refused ones are detected at setup and the monitor stays off (one
warning, no analysis, no hang); unsharded tensors and models pass through unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from svd_callback.callback import SpectralMonitor
from svd_callback.sharding import full_weight, is_dtensor, is_sharded, refusal


class DeepSpeedStrategy(DDPStrategy):
    """Stands in for Lightning's DeepSpeedStrategy (deepspeed is not installed)."""


class MyDeepSpeed(DeepSpeedStrategy):
    """A user's subclass: refused along the class hierarchy."""


@pytest.mark.parametrize("strategy, name", [(FSDPStrategy(), "FSDPStrategy"),
                                            (DeepSpeedStrategy(), "DeepSpeedStrategy"),
                                            (MyDeepSpeed(), "DeepSpeedStrategy")])
def test_refused_strategies_are_named(strategy, name):
    reason = refusal(strategy)
    assert reason is not None and name in reason and "off for this fit" in reason


def test_ddp_is_not_refused():
    assert refusal(DDPStrategy()) is None


def test_monitor_under_fsdp1_warns_once_and_does_nothing():
    monitor = SpectralMonitor(figures_every_n=0)
    trainer = SimpleNamespace(strategy=FSDPStrategy(), is_global_zero=True, loggers=[])
    module = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.warns(UserWarning, match="FSDPStrategy strategy is not supported"):
        monitor.setup(trainer, module, "fit")
    monitor.on_train_start(trainer, module)
    monitor.on_train_end(trainer, module)
    monitor._analyse(trainer, module, "train_epoch_end")
    assert monitor._schedule.analyses == 0


def test_unsharded_tensors_pass_through():
    weight = torch.randn(3, 4)
    assert not is_dtensor(weight) and full_weight(weight) is weight
    assert not is_sharded(torch.nn.Linear(4, 3))
