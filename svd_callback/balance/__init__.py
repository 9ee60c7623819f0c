"""Per-layer learning rates from each layer's ESD alpha (TempBalance, Zhou et al., NeurIPS 2023).

``tempbalance_lrs`` computes the rates once (pure torch/numpy); ``SpectralLRBalancer`` is the
Lightning callback that sets them every epoch on top of the user's optimizer and scheduler.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from svd_callback.balance.assign import ASSIGN_FUNCS, assign_lrs
from svd_callback.balance.esd import TEMPBALANCE_FITS, LayerESD, fit_alpha, layer_esd
from svd_callback.balance.groups import balanced_param_groups, split_optimizer_groups
from svd_callback.balance.tempbalance import (
    Balance,
    BalanceError,
    BalanceOptions,
    BalancePlan,
    balance_plan,
    compute_balance,
    tempbalance_lrs,
)

if TYPE_CHECKING:
    from svd_callback.balance.callback import SpectralLRBalancer

__all__ = [
    "ASSIGN_FUNCS",
    "TEMPBALANCE_FITS",
    "Balance",
    "BalanceError",
    "BalanceOptions",
    "BalancePlan",
    "LayerESD",
    "SpectralLRBalancer",
    "assign_lrs",
    "balance_plan",
    "balanced_param_groups",
    "compute_balance",
    "fit_alpha",
    "layer_esd",
    "split_optimizer_groups",
    "tempbalance_lrs",
]


def __getattr__(name: str) -> Any:
    """Import the callback (and Lightning) only when it is asked for; ``FITS``, the former name
    of :data:`TEMPBALANCE_FITS`, with a ``DeprecationWarning``."""
    if name == "FITS":
        warnings.warn("svd_callback.balance.FITS is deprecated; use TEMPBALANCE_FITS",
                      DeprecationWarning, stacklevel=2)
        return TEMPBALANCE_FITS
    if name == "SpectralLRBalancer":
        from svd_callback.balance.callback import SpectralLRBalancer

        return SpectralLRBalancer
    raise AttributeError(f"module 'svd_callback.balance' has no attribute {name!r}")
