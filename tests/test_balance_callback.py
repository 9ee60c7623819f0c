"""``SpectralLRBalancer`` in Lightning runs: per-layer groups keep the user's settings, every
step uses ``scheduler_lr * tb_factor`` (checked against the closed-form schedules and the SGD
update), the schedulers are not corrupted, the rates are logged, a resumed run continues with
the same rates, and nothing but the rates is touched."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from svd_callback.balance import (
    SpectralLRBalancer,
    balance_plan,
    balanced_param_groups,
    compute_balance,
    split_optimizer_groups,
    tempbalance_lrs,
)
from svd_callback.balance.groups import extend_scheduler_lists
from svd_callback.examples import SmallCNN

BASE_LR = 0.05
EPOCHS = 3


class SGDCNN(SmallCNN):
    """SmallCNN with SGD (two groups: biases without weight decay) and a chosen scheduler."""

    def __init__(self, scheduler: str = "cosine", momentum: float = 0.9, wd: float = 5e-4):
        super().__init__(width=16, hidden=64)
        self.scheduler_name, self.momentum, self.wd = scheduler, momentum, wd

    def configure_optimizers(self):  # noqa: D102
        decay = [p for n, p in self.named_parameters() if n.endswith("weight")]
        no_decay = [p for n, p in self.named_parameters() if not n.endswith("weight")]
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.wd}, {"params": no_decay, "weight_decay": 0.0}],
            lr=BASE_LR, momentum=self.momentum, nesterov=self.momentum > 0,
        )
        if self.scheduler_name == "none":
            return optimizer
        if self.scheduler_name == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
        else:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}


def closed_form(scheduler: str, epoch: int) -> float:
    """The schedules' textbook values at ``epoch``."""
    if scheduler == "cosine":
        return BASE_LR * (1 + math.cos(math.pi * epoch / EPOCHS)) / 2
    if scheduler == "step":
        return BASE_LR * 0.5**epoch
    return BASE_LR


def digits_loader(n: int = 256) -> DataLoader:
    digits = load_digits()
    x = torch.tensor(digits.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target[:n])
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)


class StepProbe(Callback):
    """Records, at every optimizer step, each module's lr as the step will use it, and the
    reference rates ``tempbalance_lrs(model, closed-form lr)`` at the first step of an epoch
    (the weights are still those the balancer fitted at the epoch start). With ``check_update``
    it also checks the plain SGD update ``w - lr * grad``."""

    def __init__(self, scheduler: str, check_update: bool = False) -> None:
        self.scheduler, self.check_update = scheduler, check_update
        self.seen: list[dict[str, float]] = []
        self.expected: dict[int, dict[str, float]] = {}
        self.max_update_error = 0.0
        self._before: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # noqa: D102
        owner = {id(p): n for n, m in pl_module.named_modules()
                 for p in m.parameters(recurse=False)}
        lrs = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                lrs[owner[id(p)] + ("" if p.dim() > 1 else ".bias")] = group["lr"]
        self.seen.append(lrs)
        epoch = trainer.current_epoch
        if epoch not in self.expected:
            self.expected[epoch] = tempbalance_lrs(pl_module, closed_form(self.scheduler, epoch))
        if self.check_update:
            self._before = {
                n: (p.detach().clone(), p.grad.detach().clone(), lrs[n.rsplit(".", 1)[0]])
                for n, p in pl_module.named_parameters() if n.endswith("weight")
            }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
        for n, p in pl_module.named_parameters():
            if n in self._before:
                w, g, lr = self._before[n]
                error = (p.detach() - (w - lr * g)).abs().max().item()
                self.max_update_error = max(self.max_update_error, error / (lr * g.abs().max()))
        self._before = {}


def _trainer(tmp_path: Path, callbacks, **kwargs) -> pl.Trainer:
    defaults = dict(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                    default_root_dir=tmp_path, deterministic=True)
    defaults.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **defaults)


@pytest.mark.parametrize("scheduler", ["cosine", "step"])
def test_each_step_uses_scheduler_lr_times_factor(tmp_path, scheduler):
    torch.manual_seed(0)
    model = SGDCNN(scheduler)
    balancer, probe = SpectralLRBalancer(), StepProbe(scheduler)
    _trainer(tmp_path, [balancer, probe]).fit(model, digits_loader())
    steps_per_epoch = 4
    assert len(probe.seen) == EPOCHS * steps_per_epoch
    for step, lrs in enumerate(probe.seen):
        epoch = step // steps_per_epoch
        expected = probe.expected[epoch]
        for module, lr in expected.items():
            assert lrs[module] == pytest.approx(lr, rel=1e-12), (step, module)
        # the first and last layers and everything else keep the scheduler's rate
        untuned = closed_form(scheduler, epoch)
        for module in ("features.0", "classifier", "features.0.bias", "classifier.bias"):
            assert lrs[module] == pytest.approx(untuned, rel=1e-12)
    assert sorted(expected) == ["features.2", "features.5", "hidden"]
    # factors really differ between layers (the test would not see a missing factor otherwise)
    assert max(expected.values()) / min(expected.values()) > 1.5


@pytest.mark.parametrize("scheduler", ["cosine", "step"])
def test_schedulers_and_groups_are_not_corrupted(tmp_path, scheduler):
    torch.manual_seed(0)
    model = SGDCNN(scheduler)
    trainer = _trainer(tmp_path, [SpectralLRBalancer()])
    trainer.fit(model, digits_loader())
    optimizer = trainer.optimizers[0]
    sched = trainer.lr_scheduler_configs[0].scheduler
    n = len(optimizer.param_groups)
    assert n == 2 + 6  # decay, no-decay, then the weight and the bias group of 3 layers
    assert sched.base_lrs == [BASE_LR] * n
    assert all(g["initial_lr"] == BASE_LR for g in optimizer.param_groups)
    final = closed_form(scheduler, EPOCHS)  # the unscaled rate: no factor left in the groups
    assert all(g["lr"] == pytest.approx(final, abs=1e-15) for g in optimizer.param_groups)
    # settings kept: every group from the decay group has wd 5e-4, the others 0
    params = {id(p): name for name, p in model.named_parameters()}
    for group in optimizer.param_groups:
        names = [params[id(p)] for p in group["params"]]
        assert group["momentum"] == 0.9 and group["nesterov"] is True
        assert all(name.endswith("weight") == (group["weight_decay"] == 5e-4) for name in names)
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(params)  # every parameter exactly once


def test_plain_sgd_update_uses_the_balanced_rate(tmp_path):
    torch.manual_seed(1)
    model = SGDCNN("none", momentum=0.0, wd=0.0)
    probe = StepProbe("none", check_update=True)
    _trainer(tmp_path, [SpectralLRBalancer(), probe], max_epochs=1).fit(model, digits_loader())
    # float32 rounding of w; an unscaled rate would be off by |f - 1| >= 0.1
    assert probe.max_update_error < 1e-3
    assert probe.seen[0]["features.2"] != probe.seen[0]["features.0"]


def test_rates_are_logged(tmp_path, read_events):
    torch.manual_seed(0)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    balancer = SpectralLRBalancer()
    _trainer(tmp_path, [balancer], logger=logger, max_epochs=2).fit(SGDCNN(), digits_loader())
    events = read_events(tmp_path / "tb" / "version_0")
    tags = set(events.Tags()["scalars"])
    for layer in ("features.2", "features.5", "hidden"):
        assert {f"balance/lr/{layer}", f"balance/factor/{layer}",
                f"balance/alpha_median/{layer}"} <= tags
    lr_events = events.Scalars("balance/lr/features.2")
    assert [e.step for e in lr_events] == [0, 4]
    factor = balancer.factors["features.2"]
    assert lr_events[-1].value == pytest.approx(closed_form("cosine", 1) * factor, rel=1e-6)


def test_resumed_run_continues_with_the_same_rates(tmp_path):
    def run(max_epochs, ckpt=None, checkpoint=None):
        torch.manual_seed(0)
        model = SGDCNN("cosine")
        probe = StepProbe("cosine")
        callbacks = [SpectralLRBalancer(), probe] + ([checkpoint] if checkpoint else [])
        trainer = _trainer(tmp_path, callbacks, max_epochs=max_epochs,
                           enable_checkpointing=checkpoint is not None)
        trainer.fit(model, digits_loader(), ckpt_path=ckpt)
        return model, probe

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1,
                                 filename="{epoch}")
    full, full_probe = run(EPOCHS, checkpoint=checkpoint)
    resumed, resumed_probe = run(EPOCHS, ckpt=str(tmp_path / "ckpt" / "epoch=0.ckpt"))
    assert len(resumed_probe.seen) == (EPOCHS - 1) * 4
    assert resumed_probe.seen == full_probe.seen[4:]
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mid_epoch_resume_keeps_the_checkpointed_factors(tmp_path):
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "mid", every_n_train_steps=2, save_top_k=-1,
                                 filename="{step}")
    balancer = SpectralLRBalancer()
    _trainer(tmp_path, [balancer, checkpoint], max_epochs=1,
             enable_checkpointing=True).fit(SGDCNN(), digits_loader())
    state = torch.load(tmp_path / "mid" / "step=2.ckpt", weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if "SpectralLRBalancer" in k)
    assert saved["fitted_epoch"] == 0

    resumed = SpectralLRBalancer()
    model = SGDCNN()
    _trainer(tmp_path, [resumed], max_epochs=1).fit(
        model, digits_loader(), ckpt_path=str(tmp_path / "mid" / "step=2.ckpt"))
    assert resumed.factors == saved["factors"]
    # the weights after 2 steps would give other factors
    model.load_state_dict(state["state_dict"])
    assert compute_balance(model).factors != saved["factors"]


def test_fit_changes_no_rng_and_no_mode():
    torch.manual_seed(0)
    model = SGDCNN().train()
    model.features.eval()
    rng = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    compute_balance(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert model.training and not model.features.training and model.hidden.training


def test_non_finite_weights_are_logged_and_training_goes_on(tmp_path, caplog):
    torch.manual_seed(0)
    model = SGDCNN("none")
    with torch.no_grad():
        model.hidden.weight[0, 0] = float("inf")
    balancer = SpectralLRBalancer()
    with caplog.at_level(logging.WARNING, logger="svd_callback.balance.callback"):
        _trainer(tmp_path, [balancer], max_epochs=1).fit(model, digits_loader())
    assert "non-finite weights" in caplog.text and "hidden" in caplog.text
    assert balancer.factors == {}


def test_split_extends_lambda_and_plateau_scheduler_lists():
    torch.manual_seed(0)
    model = SmallCNN(width=16, hidden=64)
    plan = balance_plan(model)
    for make in (
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, [lambda e: 0.9**e, lambda e: 0.5**e]),
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, min_lr=[1e-3, 1e-4]),
    ):
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        optimizer = torch.optim.SGD([{"params": weights}, {"params": biases, "lr": 0.2}], lr=0.1)
        scheduler = make(optimizer)
        group_modules, parents = split_optimizer_groups(optimizer, model, plan)
        assert extend_scheduler_lists(scheduler, optimizer, 2, parents) == []
        assert sorted(set(group_modules.values())) == ["features.2", "features.5", "hidden"]
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            for _ in range(3):
                optimizer.step()
                scheduler.step()
            expected = [0.1 * 0.9**3, 0.2 * 0.5**3]
        else:
            for _ in range(100):
                scheduler.step(1.0)
            expected = [1e-3, 1e-4]
        for index, group in enumerate(optimizer.param_groups):
            parent = index if index < 2 else parents[index - 2]
            assert group["lr"] == pytest.approx(expected[parent], rel=1e-12)


def test_no_tuned_layer_leaves_the_optimizer_alone(tmp_path, caplog):
    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = _trainer(tmp_path, [SpectralLRBalancer()], max_epochs=1)
    with caplog.at_level(logging.WARNING, logger="svd_callback.balance.callback"):
        trainer.fit(Tiny(), digits_loader())
    assert "no layer to balance" in caplog.text
    assert len(trainer.optimizers[0].param_groups) == 1


def test_balanced_param_groups_are_used_as_they_are(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(width=16, hidden=64)
    plan = balance_plan(model)
    groups = balanced_param_groups(model, plan, {"weight_decay": 1e-4})
    # the reference's layout: one group per tuned module in module order, then the rest
    assert [len(g["params"]) for g in groups] == [2, 2, 2, 4]
    optimizer = torch.optim.SGD(groups, lr=0.1)
    group_modules, parents = split_optimizer_groups(optimizer, model, plan)
    assert parents == [] and len(optimizer.param_groups) == 4
    assert group_modules == {0: "features.2", 1: "features.5", 2: "hidden"}


def test_every_n_epochs_refits_only_on_those_epochs(tmp_path):
    torch.manual_seed(0)

    class FitCounter(SpectralLRBalancer):
        fitted: list[int] = []

        def _refit(self, trainer, pl_module, epoch):
            FitCounter.fitted.append(epoch)
            super()._refit(trainer, pl_module, epoch)

    _trainer(tmp_path, [FitCounter(every_n_epochs=2)], max_epochs=5).fit(
        SGDCNN("none"), digits_loader(128))
    assert FitCounter.fitted == [0, 2, 4]


def test_unmaterialised_lazy_layer_is_untuned_with_a_reason():
    model = nn.Sequential(nn.Linear(64, 64), nn.LazyLinear(64), nn.Linear(64, 64),
                          nn.Linear(64, 10))
    plan = balance_plan(model)
    assert plan.tuned == ("2",) and "not materialised" in plan.untuned["1"]


class DropoutCNN(SGDCNN):
    """SGDCNN with dropout on the hidden features: any random draw or train/eval switch made by
    a callback would change the masks and so the weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.features(x)).flatten(1)
        h = nn.functional.dropout(torch.relu(self.hidden(h)), 0.3, self.training)
        return self.classifier(h)


def test_unit_factors_leave_training_bit_identical(tmp_path):
    def run(callbacks):
        torch.manual_seed(0)
        model = DropoutCNN("cosine")
        _trainer(tmp_path, callbacks, max_epochs=2).fit(model, digits_loader())
        return model

    baseline = run([])
    balanced = run([SpectralLRBalancer(lr_min_ratio=1.0, lr_max_ratio=1.0)])
    for a, b in zip(baseline.parameters(), balanced.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    moved = run([SpectralLRBalancer()])
    assert not torch.equal(moved.hidden.weight, baseline.hidden.weight)


def test_split_extends_chained_schedulers():
    torch.manual_seed(0)
    model = SmallCNN(width=16, hidden=64)
    plan = balance_plan(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=2)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[2])
    _, parents = split_optimizer_groups(optimizer, model, plan)
    assert parents == [0, 0, 0]
    assert extend_scheduler_lists(scheduler, optimizer, 1, parents) == []
    assert scheduler._milestones == [2]  # not a per-group list
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        rates = {g["lr"] for g in optimizer.param_groups}
        assert len(rates) == 1  # every new group follows its parent
    assert rates.pop() == pytest.approx(0.1 * (1 + math.cos(math.pi * 2 / 4)) / 2, rel=1e-12)
