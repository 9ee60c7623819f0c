"""Per-layer learning rates from each layer's ESD alpha: TempBalance (Zhou et al., "Temperature
Balancing, Layer-wise Weight Analysis, and Neural Network Training", NeurIPS 2023; reference
``Tempbalance.build_optimizer_param_group`` of github.com/YefanZhou/TempBalance).

Which layers are tuned depends on the model's structure only (never on the weights' values), so
the same per-layer parameter groups are built on every run, rank and resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from svd_callback.balance.assign import ASSIGN_FUNCS, assign_lrs
from svd_callback.balance.esd import TEMPBALANCE_FITS, LayerESD, layer_esd
from svd_callback.layers import read_weight

NORM_PAIRINGS = ("name", "order")


class BalanceError(ValueError):
    """The balanced rates cannot be computed (a tuned layer's score is not finite)."""


@dataclass(frozen=True)
class BalanceOptions:
    """TempBalance's settings, defaults as in the reference ``Tempbalance.__init__``.

    Args:
        conv_norm: a conv's ``kh*kw`` slices are scaled by ``sqrt(conv_norm)``.
        fit: ``median``, ``goodness-of-fit`` or ``fix-finger`` (``esd.fit_alpha``).
        xmin_pos: the median fit's ``xmin`` is eigenvalue ``int(N / xmin_pos)`` (ascending).
        filter_zeros: drop eigenvalues ``<= evals_thresh`` before the fit.
        evals_thresh: threshold of ``filter_zeros``.
        bins: histogram bins of the ``fix-finger`` fit.
        remove_first_layer: leave the first ``Conv2d``/``Linear`` (module order) untuned.
        remove_last_layer: leave the last one untuned.
        eigs_thresh: tune only layers with at least this many eigenvalues.
        metric: the score mapped to rates: ``alpha``, ``alphahat``, ``D``, ``spectral_norm``,
            ``norm``.
        assign_func: ``tb_linear_map``, ``tb_sqrt``, ``tb_log2`` or ``tb_step``.
        lr_min_ratio: smallest rate, as a fraction of the base rate.
        lr_max_ratio: largest rate, as a fraction of the base rate.
        batchnorm: how a ``BatchNorm2d`` shares its conv's rate: ``"name"`` (the conv named
            like it with ``bn`` replaced by ``conv``), ``"order"`` (the ``Conv2d`` right before
            it), or ``None`` (untuned).
        layernorm: a ``LayerNorm`` right after a tuned ``Linear`` shares its rate.
    """

    conv_norm: float = 0.5
    fit: str = "median"
    xmin_pos: float = 2
    filter_zeros: bool = False
    evals_thresh: float = 1e-5
    bins: int = 100
    remove_first_layer: bool = True
    remove_last_layer: bool = True
    eigs_thresh: int = 50
    metric: str = "alpha"
    assign_func: str = "tb_linear_map"
    lr_min_ratio: float = 0.5
    lr_max_ratio: float = 1.5
    batchnorm: str | None = "name"
    layernorm: bool = False

    def __post_init__(self) -> None:
        if self.fit not in TEMPBALANCE_FITS:
            raise ValueError(f"fit must be one of {TEMPBALANCE_FITS}, got {self.fit!r}")
        if self.assign_func not in ASSIGN_FUNCS:
            raise ValueError(f"assign_func must be one of {ASSIGN_FUNCS}, got {self.assign_func!r}")
        if self.batchnorm is not None and self.batchnorm not in NORM_PAIRINGS:
            raise ValueError(f"batchnorm must be one of {NORM_PAIRINGS} or None")
        if self.metric not in ("alpha", "alphahat", "D", "spectral_norm", "norm"):
            raise ValueError(f"unknown metric {self.metric!r}")
        if not 0 < self.lr_min_ratio <= self.lr_max_ratio:
            raise ValueError("need 0 < lr_min_ratio <= lr_max_ratio")
        if self.xmin_pos < 1:
            raise ValueError("xmin_pos must be >= 1")

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> BalanceOptions:
        """Build from keyword arguments, naming any unknown one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown TempBalance option(s): {unknown}")
        return cls(**kwargs)  # type: ignore[arg-type]

    def convention(self) -> str:
        """One line naming how the scores and rates were made (for logs and docs)."""
        return (
            f"TempBalance {self.metric} ({self.fit} fit, xmin_pos={self.xmin_pos}, "
            f"conv slices x sqrt({self.conv_norm})), {self.assign_func} "
            f"[{self.lr_min_ratio}, {self.lr_max_ratio}]"
        )


def _eigs_num(module: nn.Module) -> int:
    """Eigenvalue count of a ``Linear`` (``min(out, in)``) or ``Conv2d`` (``kh*kw`` slices of
    ``min(out, in/groups)``), from the weight's shape."""
    shape = module.weight.shape
    if isinstance(module, nn.Conv2d):
        return int(shape[2] * shape[3] * min(shape[0], shape[1]))
    return int(min(shape[0], shape[1]))


@dataclass(frozen=True)
class BalancePlan:
    """The structure of a balanced model: which layers are tuned and which norm layers follow.

    ``layers``: every ``Conv2d``/``Linear`` in module order; ``tuned``: those balanced;
    ``norm_of``: norm layer name -> the tuned layer whose rate it shares; ``untuned``: layer
    name -> why it is not tuned.
    """

    layers: tuple[str, ...]
    tuned: tuple[str, ...]
    norm_of: dict[str, str]
    untuned: dict[str, str] = field(default_factory=dict)

    def rate_owner(self, name: str) -> str | None:
        """The tuned layer whose rate module ``name`` gets, or None."""
        if name in self.tuned:
            return name
        return self.norm_of.get(name)

    def modules_in_order(self, model: nn.Module) -> list[str]:
        """Tuned layers and their norm layers in ``named_modules`` order (the reference's
        parameter-group order)."""
        return [name for name, _ in model.named_modules() if self.rate_owner(name) is not None]


def _norm_pairs(model: nn.Module, options: BalanceOptions) -> dict[str, str]:
    """Norm layer name -> layer name, by the reference's ``batchnorm_type`` and ``layernorm``."""
    pairs: dict[str, str] = {}
    if options.batchnorm == "name":
        layer_names = {
            name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
        }
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d) and name.replace("bn", "conv") in layer_names:
                pairs[name] = name.replace("bn", "conv")
    elif options.batchnorm == "order":
        pairs.update(_pairs_by_order(model, nn.Conv2d, nn.BatchNorm2d))
    if options.layernorm:
        pairs.update(_pairs_by_order(model, nn.Linear, nn.LayerNorm))
    return pairs


def _pairs_by_order(
    model: nn.Module, layer_type: type[nn.Module], norm_type: type[nn.Module]
) -> dict[str, str]:
    """Norm layer name -> the last ``layer_type`` module before it in ``named_modules`` order,
    unless another ``norm_type`` module came between them (the reference's pairing by order)."""
    pairs: dict[str, str] = {}
    previous: tuple[str, bool] | None = None  # (name, is a layer_type module)
    for name, m in model.named_modules():
        if isinstance(m, layer_type):
            previous = (name, True)
        elif isinstance(m, norm_type):
            if previous is not None and previous[1]:
                pairs[name] = previous[0]
            previous = (name, False)
    return pairs


def balance_plan(model: nn.Module, options: BalanceOptions | None = None) -> BalancePlan:
    """Which layers TempBalance tunes: every ``Conv2d``/``Linear`` but the first and last
    (module order), then those with at least ``eigs_thresh`` eigenvalues."""
    options = options or BalanceOptions()
    modules = dict(model.named_modules())
    layers = [n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)]
    untuned: dict[str, str] = {}
    kept = list(layers)
    if options.remove_first_layer and kept:
        untuned[kept.pop(0)] = "first layer"
    if options.remove_last_layer and kept:
        untuned[kept.pop()] = "last layer"
    tuned = []
    for name in kept:
        if isinstance(modules[name].weight, nn.parameter.UninitializedParameter):
            untuned[name] = "lazy module not materialised (run a forward pass first)"
            continue
        count = _eigs_num(modules[name])
        if count >= options.eigs_thresh:
            tuned.append(name)
        else:
            untuned[name] = f"{count} eigenvalues < eigs_thresh={options.eigs_thresh}"
    norm_of = {k: v for k, v in _norm_pairs(model, options).items() if v in tuned}
    return BalancePlan(tuple(layers), tuple(tuned), norm_of, untuned)


@dataclass(frozen=True)
class Balance:
    """One TempBalance assignment: ``esd`` per tuned layer, ``scores`` (``options.metric``),
    ``factors`` (rate / base rate) per tuned layer and norm layer, in parameter-group order."""

    plan: BalancePlan
    options: BalanceOptions
    esd: dict[str, LayerESD]
    scores: dict[str, float]
    factors: dict[str, float]

    def lrs(self, base_lr: float) -> dict[str, float]:
        """Module name -> learning rate, the reference's arithmetic with ``untuned_lr=base_lr``."""
        names = list(self.scores)
        rates = assign_lrs(
            np.array([self.scores[n] for n in names]), base_lr, self.options.assign_func,
            self.options.lr_min_ratio, self.options.lr_max_ratio,
        )
        by_layer = dict(zip(names, (float(r) for r in rates), strict=True))
        return {name: by_layer[self.plan.rate_owner(name)] for name in self.factors}


def compute_balance(model: nn.Module, options: BalanceOptions | None = None) -> Balance:
    """Fit every tuned layer's ESD and assign its rate factor (base rate 1).

    Raises ``BalanceError`` naming the layers when a tuned layer's weights or score are NaN or
    infinite.
    """
    options = options or BalanceOptions()
    plan = balance_plan(model, options)
    modules = dict(model.named_modules())
    weights = {name: read_weight(modules[name]) for name in plan.tuned}
    bad = [name for name, w in weights.items() if not bool(torch.isfinite(w).all())]
    if bad:
        raise BalanceError(f"non-finite weights in layer(s) {bad}")
    esd = {}
    for name in plan.tuned:
        esd[name] = layer_esd(
            name, modules[name], weights[name], conv_norm=options.conv_norm,
            fit=options.fit, xmin_pos=options.xmin_pos, filter_zeros=options.filter_zeros,
            evals_thresh=options.evals_thresh, bins=options.bins,
        )
    scores = {name: e.score(options.metric) for name, e in esd.items()}
    bad = [name for name, s in scores.items() if not math.isfinite(s)]
    if bad:
        raise BalanceError(f"non-finite {options.metric} for layer(s) {bad}")
    order = plan.modules_in_order(model)
    partial = Balance(plan, options, esd, scores, dict.fromkeys(order, 1.0))
    return Balance(plan, options, esd, scores, partial.lrs(1.0))


def tempbalance_lrs(
    model: nn.Module,
    base_lr: float,
    *,
    lr_min_ratio: float = 0.5,
    lr_max_ratio: float = 1.5,
    **options: object,
) -> dict[str, float]:
    """Module name -> learning rate for every tuned layer and the norm layers that share its
    rate, in ``named_modules`` order: the rates of the reference
    ``Tempbalance(model).build_optimizer_param_group(untuned_lr=base_lr)`` (every other
    parameter keeps ``base_lr``). ``options``: the other ``BalanceOptions`` fields.
    """
    opts = BalanceOptions.from_kwargs(
        lr_min_ratio=lr_min_ratio, lr_max_ratio=lr_max_ratio, **options
    )
    return compute_balance(model, opts).lrs(base_lr)
