"""What a zoo run records besides the monitor's history: per-epoch losses and accuracies, and
the statistics the published training-problem detectors read (gradients, activations and
weights on a fixed probe batch), so that every detector can be replayed from the cached run.

AUTOTRAINER (Zhang et al., "AUTOTRAINER: An Automatic DNN Training Problem Detection and Repair
System", ICSE 2021) and DeepDiagnosis (Wardat et al., "DeepDiagnosis: Automatically Diagnosing
Faults and Recommending Actionable Fixes in Deep Learning Programs", ICSE 2022) both read, at
the end of an epoch, the gradient of the loss with respect to every trainable weight and the
output of every layer on the first batch of the training data, in inference mode. The
:class:`ProbeRecorder` does the same on the first ``probe_size`` training images as they are at
that moment (a corrupted training set is seen corrupted), in eval mode, under a forked random
generator and without touching ``.grad``: the run trains exactly as it would without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from experiments.common import EpochRecorder

SATURATION = 5.0
"""|pre-activation| at or beyond which a sigmoid/tanh unit counts as saturated (DeepDiagnosis'
``min/max_threshold_sigmoid/tanh``)."""

ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
}
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LSTM, nn.GRU, nn.RNN)


def _round(value: float, digits: int = 5) -> float | None:
    """``value`` to ``digits`` significant digits; None for NaN/Inf (JSON has no NaN)."""
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def _exact(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def batch_loss(module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean loss, accuracy or None) of a batch: the module's ``batch_metrics`` when it has one
    (the zoo's models), else cross-entropy of its logits (the library's example classifiers)."""
    metrics = getattr(module, "batch_metrics", None)
    if metrics is not None:
        return metrics(batch)
    x, y = batch
    logits = module(x)
    return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()


class ZooEpochRecorder(EpochRecorder):
    """:class:`~experiments.common.EpochRecorder` with the training accuracy and the learning
    rate of each epoch, and an epoch-0 validation loss computed with the module's own criterion
    (label smoothing, a VAE's loss) rather than plain cross-entropy."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if getattr(pl_module, "batch_metrics", None) is None:
            return
        was_training = pl_module.training
        pl_module.eval()
        total, correct, count = 0.0, 0.0, 0
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            for x, y in trainer.datamodule.val_dataloader():
                loss, acc = pl_module.batch_metrics((x, y))
                total += float(loss) * len(y)
                correct += math.nan if acc is None else float(acc) * len(y)
                count += len(y)
        pl_module.train(was_training)
        self.rows[0].update(val_loss=total / max(count, 1), val_acc=correct / max(count, 1))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.rows and self.rows[-1]["epoch"] == trainer.current_epoch + 1:
            acc = trainer.callback_metrics.get("train_acc")
            self.rows[-1]["train_acc"] = math.nan if acc is None else float(acc)
            self.rows[-1]["lr"] = _learning_rate(trainer)


def _learning_rate(trainer: pl.Trainer) -> float:
    optimizers = trainer.optimizers
    if not optimizers or not optimizers[0].param_groups:
        return math.nan
    return float(optimizers[0].param_groups[0]["lr"])


class _ActivationProbe(TorchFunctionMode):
    """Records the input of every ReLU, sigmoid and tanh call (functional or module) in a
    forward pass, in call order."""

    def __init__(self, sink: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = ACTIVATION_FUNCTIONS.get(func)
        if kind is not None and args and isinstance(args[0], torch.Tensor):
            self.sink(kind, args[0].detach())
        return func(*args, **(kwargs or {}))


def activation_stats(kind: str, x: torch.Tensor) -> dict[str, Any]:
    """Statistics of one activation's input x (pre-activation) on the probe batch:
    ``le0`` the fraction of values <= 0 (a ReLU's output there is 0: DeepDiagnosis' dead-node
    ratio), ``dead_units`` the fraction of units (channel dim 1 of a 4-D/5-D map, else the last
    dim) <= 0 on every probe value, ``saturated`` the fraction with |x| >= :data:`SATURATION`
    (DeepDiagnosis' saturation ratio, for sigmoid/tanh), ``out_mean`` the mean output."""
    x = x.float()
    finite = bool(torch.isfinite(x).all())
    if x.ndim >= 4:
        per_unit = x.transpose(0, 1).reshape(x.shape[1], -1)
    else:
        per_unit = x.reshape(-1, x.shape[-1]).T
    out = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[kind](x)
    return {
        "kind": kind, "finite": finite,
        "le0": _round((x <= 0).float().mean()),
        "dead_units": _round((per_unit <= 0).all(dim=1).float().mean()),
        "saturated": _round((x.abs() >= SATURATION).float().mean()),
        "out_mean": _exact(out.double().mean()),
    }


def _output_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]  # recurrent layers: (output, state)
    return None


class ProbeRecorder(Callback):
    """Per analysis epoch k (k = 0 at the start of training, then after each training epoch),
    one row of probe statistics, plus the gradient norms seen during the epoch's steps.

    Row fields: ``epoch``; ``loss`` (probe loss); ``params``: per trainable parameter, name ->
    ``module`` (:func:`parameter_owners`), ``ndim``, ``size``, ``grad_norm``,
    ``grad_abs_mean``, ``grad_mean``, ``grad_zero`` (fraction exactly 0), ``grad_finite``,
    ``w_mean`` (float64, exact), ``w_abs_max``, ``w_norm`` (vectors, ndim < 2: ``module``,
    ``ndim``, ``size``, ``grad_zero`` and ``grad_finite`` only); ``frozen``: per parameter
    without ``requires_grad``, ``module``, ``ndim`` and ``w_mean``; ``layers``: per
    Linear/Conv/recurrent module in forward order, name -> ``out_mean``, ``out_abs_mean``,
    ``finite``; ``activations``: per ReLU/sigmoid/tanh call in forward order
    (:func:`activation_stats`); ``steps``: per weight matrix (ndim >= 2) the mean and max over
    the epoch's optimiser steps of its gradient norm, and ``non_finite_steps``.
    """

    def __init__(self, probe_size: int = 128) -> None:
        super().__init__()
        self.probe_size = probe_size
        self.rows: list[dict[str, Any]] = []
        self._steps: dict[str, list[float]] = {}
        self._non_finite = 0

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = [self._probe(trainer, pl_module, 0)]
        self._reset_steps()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for name, p in pl_module.named_parameters():
                if p.grad is None or p.ndim < 2:
                    continue
                norm = float(torch.linalg.vector_norm(p.grad))
                if not math.isfinite(norm):
                    self._non_finite += 1
                self._steps.setdefault(name, []).append(norm)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = self._probe(trainer, pl_module, trainer.current_epoch + 1)
        row["steps"] = {
            name: {"mean": _round(sum(v) / len(v)), "max": _round(max(v))}
            for name, v in self._steps.items() if v
        }
        row["non_finite_steps"] = self._non_finite
        self.rows.append(row)
        self._reset_steps()

    def _reset_steps(self) -> None:
        self._steps, self._non_finite = {}, 0

    # ------------------------------------------------------------------ the probe
    def probe_batch(self, trainer: pl.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``probe_size`` items of the training set as it is now."""
        dataset = trainer.datamodule.train_set
        items = [dataset[i] for i in range(min(self.probe_size, len(dataset)))]
        return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y)
                                                                for _, y in items])

    def _probe(self, trainer: pl.Trainer, module: pl.LightningModule,
               epoch: int) -> dict[str, Any]:
        was_training = module.training
        layers: dict[str, dict[str, Any]] = {}
        activations: list[dict[str, Any]] = []
        handles = []
        for name, sub in module.named_modules():
            if isinstance(sub, LAYER_TYPES):
                handles.append(sub.register_forward_hook(self._layer_hook(name, layers)))
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        row: dict[str, Any] = {"epoch": epoch}
        try:
            with torch.random.fork_rng(), torch.enable_grad():
                torch.manual_seed(epoch)  # augmentation and a VAE's sample: same per epoch
                x, y = self.probe_batch(trainer)
                module.eval()
                with _ActivationProbe(lambda kind, t: activations.append(
                        activation_stats(kind, t))):
                    loss, _ = batch_loss(module, (x, y))
                grads = torch.autograd.grad(loss, [p for _, p in trainable],
                                            allow_unused=True) if loss.requires_grad else \
                    [None] * len(trainable)
        finally:
            for handle in handles:
                handle.remove()
            module.train(was_training)
        row["loss"] = _exact(loss.detach().double())
        owners = parameter_owners(module)
        row["params"] = {name: {"module": owners.get(name, "other"), **_param_stats(p, g)}
                         for (name, p), g in zip(trainable, grads, strict=True)}
        row["frozen"] = {name: {"module": owners.get(name, "other"), "ndim": p.ndim,
                                "w_mean": _exact(p.detach().double().mean())}
                         for name, p in module.named_parameters() if not p.requires_grad}
        row["layers"] = layers
        row["activations"] = activations
        return row

    @staticmethod
    def _layer_hook(name: str, sink: dict[str, dict[str, Any]]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = _output_tensor(output)
            if tensor is None:
                return
            t = tensor.detach().double()
            sink[name] = {"out_mean": _exact(t.mean()), "out_abs_mean": _round(t.abs().mean()),
                          "finite": bool(torch.isfinite(t).all())}
        return hook


def parameter_owners(module: nn.Module) -> dict[str, str]:
    """Parameter name -> the kind of module that owns it: ``linear``, ``conv``, ``recurrent``,
    ``norm`` or ``other`` (DeepDiagnosis watches the weights of dense layers only)."""
    kinds = ((nn.Linear, "linear"), ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
             (nn.RNNBase, "recurrent"),
             ((nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm), "norm"))
    owners = {}
    for prefix, sub in module.named_modules():
        label = next((name for types, name in kinds if isinstance(sub, types)), None)
        if label is None:
            continue
        for name, _ in sub.named_parameters(recurse=False):
            owners[f"{prefix}.{name}" if prefix else name] = label
    return owners


def _param_stats(p: torch.Tensor, g: torch.Tensor | None) -> dict[str, Any]:
    if p.ndim < 2:  # biases and norm scales: what AUTOTRAINER's zero-gradient ratio counts
        return {"ndim": p.ndim, "size": p.numel(),
                "grad_zero": 1.0 if g is None else _round((g == 0).double().mean()),
                "grad_finite": True if g is None else bool(torch.isfinite(g).all())}
    w = p.detach().double()
    stats: dict[str, Any] = {"ndim": p.ndim, "size": p.numel(), "w_mean": _exact(w.mean()),
                             "w_abs_max": _round(w.abs().max()),
                             "w_norm": _round(torch.linalg.vector_norm(w))}
    if g is None:
        stats.update(grad_norm=0.0, grad_abs_mean=0.0, grad_mean=0.0, grad_zero=1.0,
                     grad_finite=True)
        return stats
    g = g.detach().double()
    stats.update(grad_norm=_round(torch.linalg.vector_norm(g)),
                 grad_abs_mean=_round(g.abs().mean()), grad_mean=_exact(g.mean()),
                 grad_zero=_round((g == 0).double().mean()),
                 grad_finite=bool(torch.isfinite(g).all()))
    return stats
