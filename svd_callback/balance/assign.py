"""TempBalance's learning-rate assignment functions (``Tempbalance.get_layer_temps`` of
github.com/YefanZhou/TempBalance): per-layer scores in, per-layer learning rates out.

With ``s_i`` the score of layer ``i`` (its alpha by default), ``n`` layers and base rate ``lr``:

- ``tb_linear_map``: ``lr * interp(s_i, [min s, max s], [lr_min_ratio, lr_max_ratio])``
  (``numpy.interp``; equal scores all get ``lr * lr_max_ratio``, numpy's answer);
- ``tb_sqrt``: ``n * lr * sqrt(s_i) / sum_j sqrt(s_j)``;
- ``tb_log2``: ``n * lr * log2(s_i) / sum_j log2(s_j)``;
- ``tb_step``: the layer of rank ``r`` (0 = smallest score, ties in `numpy.argsort` order) gets
  ``lr * (lr_min_ratio + (lr_max_ratio - lr_min_ratio) * r / n)``.

A heavier tail (smaller alpha) means a better-trained layer, which gets a smaller rate.
"""

from __future__ import annotations

import numpy as np

ASSIGN_FUNCS = ("tb_linear_map", "tb_sqrt", "tb_log2", "tb_step")


def assign_lrs(
    scores: np.ndarray,
    base_lr: float,
    assign_func: str = "tb_linear_map",
    lr_min_ratio: float = 0.5,
    lr_max_ratio: float = 1.5,
) -> np.ndarray:
    """The learning rate of each layer, in the order of ``scores`` (formulas in the module
    docstring)."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    if n == 0:
        return np.zeros(0)
    if assign_func == "tb_linear_map":
        lr_range = [lr_min_ratio * base_lr, lr_max_ratio * base_lr]
        return np.interp(scores, [min(scores), max(scores)], lr_range)
    if assign_func == "tb_sqrt":
        return np.sqrt(scores) / np.sum(np.sqrt(scores)) * n * base_lr
    if assign_func == "tb_log2":
        return np.log2(scores) / np.sum(np.log2(scores)) * n * base_lr
    if assign_func == "tb_step":
        ranks = np.empty(n, dtype=int)
        ranks[np.argsort(scores)] = np.arange(n)
        span = lr_max_ratio - lr_min_ratio
        return np.array([base_lr * (lr_min_ratio + span * r / n) for r in ranks])
    raise ValueError(f"assign_func must be one of {ASSIGN_FUNCS}, got {assign_func!r}")
