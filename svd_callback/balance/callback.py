"""``SpectralLRBalancer``: TempBalance per-layer learning rates as a Lightning callback.

At fit start every tuned layer (and the norm layer that shares its rate) gets its own parameter
group(s), split out of the user's groups with their settings; the schedulers' per-group lists
are extended to match. At the start of each epoch the layers' alphas are fitted (rank 0,
broadcast) and each group's rate factor ``f = tb_rate / base_rate`` is set.

The factor is applied only around ``optimizer.step``: a step pre-hook multiplies the group's
``lr`` by ``f`` and a post-hook puts the scheduler's value back (the same object). The rate a
layer trains with is therefore ``scheduler_lr * f``, while schedulers (``base_lrs``,
``initial_lr``, chainable ``get_lr``), ``LearningRateMonitor`` and checkpoints only ever see the
unscaled rates.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from svd_callback.balance.groups import extend_scheduler_lists, split_optimizer_groups
from svd_callback.balance.tempbalance import (
    BalanceError,
    BalanceOptions,
    balance_plan,
    compute_balance,
)
from svd_callback.sinks.tags import clean_layer_name

log = logging.getLogger(__name__)


class SpectralLRBalancer(Callback):
    """Per-layer learning rates from each layer's ESD alpha (TempBalance, Zhou et al. 2023).

    Args:
        lr_min_ratio: factor of the layer with the smallest score (``tb_linear_map``).
        lr_max_ratio: factor of the layer with the largest score.
        every_n_epochs: refit the alphas at the start of every n-th epoch (epoch 0 always).
        log_lrs: log ``balance/lr/<module>`` (the rate of the module's first group times its
            factor, at the start of the epoch), ``balance/factor/<module>`` and
            ``balance/<metric>_<fit>/<layer>`` (the score) to every logger, from rank 0.
        **options: the other ``BalanceOptions`` fields (``fit``, ``assign_func``, ``metric``,
            ``conv_norm``, ``batchnorm``, ...).

    Groups: a group whose parameters all belong to one tuned module is used as it is (e.g.
    built by ``balanced_param_groups``); otherwise the module's parameters move to a new group,
    a copy of the one they came from. Only the rates of those groups are scaled.

    A checkpoint holds the factors and the epoch they were fitted for: a run resumed within
    that epoch keeps them; a run resumed at a later epoch refits them from the restored
    weights, as the uninterrupted run did. A fit that fails (non-finite weights) is logged and
    the previous factors (at first: 1) are kept.
    """

    def __init__(
        self,
        *,
        lr_min_ratio: float = 0.5,
        lr_max_ratio: float = 1.5,
        every_n_epochs: int = 1,
        log_lrs: bool = True,
        **options: Any,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError("every_n_epochs must be >= 1")
        self.options = BalanceOptions.from_kwargs(
            lr_min_ratio=lr_min_ratio, lr_max_ratio=lr_max_ratio, **options
        )
        self.every_n_epochs = every_n_epochs
        self.log_lrs = log_lrs
        self.factors: dict[str, float] = {}
        self.scores: dict[str, float] = {}
        self.fitted_epoch: int | None = None
        self.group_modules: dict[int, dict[int, str]] = {}  # optimizer -> group -> module
        self._handles: list[Any] = []
        self._scaled: dict[int, dict[int, tuple[Any, Any]]] = {}
        self._warned_changed = False

    # -- fit start: groups and step hooks -------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Split the tuned modules into their own groups and hook every optimizer's step."""
        self._remove_hooks()
        plan = balance_plan(pl_module, self.options)
        if not plan.tuned:
            log.warning(
                "SpectralLRBalancer: no layer to balance (%s); learning rates are left as set",
                "; ".join(f"{k}: {v}" for k, v in plan.untuned.items()) or "no Conv2d/Linear",
            )
            return
        self.group_modules = {}
        for index, optimizer in enumerate(trainer.optimizers):
            n_before = len(optimizer.param_groups)
            group_modules, parents = split_optimizer_groups(optimizer, pl_module, plan)
            if parents:
                for config in trainer.lr_scheduler_configs:
                    unknown = extend_scheduler_lists(config.scheduler, optimizer, n_before, parents)
                    if unknown:
                        log.warning(
                            "SpectralLRBalancer: scheduler lists %s have one entry per group "
                            "but are not extended for the new groups", unknown,
                        )
            if group_modules:
                self.group_modules[index] = group_modules
                self._handles.append(optimizer.register_step_pre_hook(self._pre_hook(index)))
                self._handles.append(optimizer.register_step_post_hook(self._post_hook(index)))

    def _pre_hook(self, index: int):  # noqa: ANN202
        def scale(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self._restore(index, optimizer)  # a previous step that raised left them scaled
            scaled = {}
            for group_index, module in self.group_modules[index].items():
                factor = self.factors.get(module, 1.0)
                if factor == 1.0:
                    continue
                group = optimizer.param_groups[group_index]
                original = group["lr"]
                group["lr"] = original * factor
                scaled[group_index] = (original, group["lr"])
            self._scaled[index] = scaled

        return scale

    def _post_hook(self, index: int):  # noqa: ANN202
        def restore(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self._restore(index, optimizer)

        return restore

    def _restore(self, index: int, optimizer: torch.optim.Optimizer) -> None:
        for group_index, (original, scaled) in self._scaled.pop(index, {}).items():
            group = optimizer.param_groups[group_index]
            if group["lr"] is scaled:
                group["lr"] = original
            elif not self._warned_changed:
                self._warned_changed = True
                log.warning(
                    "SpectralLRBalancer: a group's lr was changed during optimizer.step; "
                    "the new value is kept unscaled"
                )

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Unhook the optimizers."""
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Unhook the optimizers (also after an exception)."""
        self._remove_hooks()

    # -- each epoch: fit the alphas, set the factors, log ---------------------------------

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refit the factors (unless they were fitted for this epoch before a resume)."""
        if not self.group_modules:
            return
        epoch = trainer.current_epoch
        due = epoch % self.every_n_epochs == 0 or self.fitted_epoch is None
        if self.fitted_epoch != epoch and due:
            self._refit(trainer, pl_module, epoch)
        if self.log_lrs:
            self._log(trainer)

    def _refit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        payload: tuple[dict[str, float], dict[str, float]] | str | None = None
        if trainer.is_global_zero:
            try:
                balance = compute_balance(pl_module, self.options)
                payload = (balance.factors, balance.scores)
            except (BalanceError, RuntimeError) as error:  # torch.linalg errors are RuntimeErrors
                payload = f"{type(error).__name__}: {error}"
        payload = trainer.strategy.broadcast(payload, src=0)
        if isinstance(payload, str):
            log.warning(
                "SpectralLRBalancer: epoch %d: rates not refitted (%s); previous factors kept",
                epoch, payload,
            )
            return
        self.factors, self.scores = payload  # type: ignore[misc]
        self.fitted_epoch = epoch

    def effective_lrs(self, trainer: pl.Trainer) -> dict[str, float]:
        """Module name -> current rate of its first group times its factor."""
        lrs: dict[str, float] = {}
        for index, group_modules in self.group_modules.items():
            groups = trainer.optimizers[index].param_groups
            for group_index, module in sorted(group_modules.items()):
                if module not in lrs:
                    lr = float(groups[group_index]["lr"])
                    lrs[module] = lr * self.factors.get(module, 1.0)
        return lrs

    def _log(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        score_tag = f"balance/{self.options.metric}_{self.options.fit}"
        metrics = {}
        for module, lr in self.effective_lrs(trainer).items():
            name = clean_layer_name(module)
            metrics[f"balance/lr/{name}"] = lr
            metrics[f"balance/factor/{name}"] = self.factors.get(module, 1.0)
        for layer, score in self.scores.items():
            metrics[f"{score_tag}/{clean_layer_name(layer)}"] = score
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # -- checkpoint -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The factors, their scores, the epoch they were fitted for and the options."""
        return {
            "factors": dict(self.factors),
            "scores": dict(self.scores),
            "fitted_epoch": self.fitted_epoch,
            "options": asdict(self.options),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the factors (a checkpoint made with other options is refitted instead)."""
        if state_dict.get("options") != asdict(self.options):
            log.warning("SpectralLRBalancer: checkpoint made with other options; refitting")
            return
        self.factors = dict(state_dict["factors"])
        self.scores = dict(state_dict["scores"])
        self.fitted_epoch = state_dict["fitted_epoch"]
