"""Badola et al.'s functional test of the class-specific feature sets S_c
(docs/methods.md#class-statistics).

With h(x) the D penultimate features (the pooled input of the linear classifier head W, b), the
head's logit of class c restricted to a feature set T_c is

    z_c(x; T) = sum_{j in T_c} W[c, j] h_j(x) + b_c        (the other features zeroed).

The test compares the probe accuracy of argmax_c z_c(x; T) for T_c = S_c (``specific``) with the
full head (T_c = all features, ``full``) and with random sets of the same sizes |T_c| = |S_c|
(``random``, the mean over ``draws`` draws of a private generator): S_c carries class c when
``specific`` is well above ``random``. A class without a set (absent from the probe, or S_c
empty) has T_c = {} (its logit is b_c); head rows beyond the probe's classes likewise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["functional_test", "masked_accuracy"]


def masked_accuracy(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor | None, mask: torch.Tensor,
) -> float:
    """Accuracy of argmax_c (sum_j mask[c, j] W[c, j] h_j + b_c) on (features, labels)."""
    logits = features @ (weight * mask).T
    if bias is not None:
        logits = logits + bias
    return float((logits.argmax(dim=1) == labels).to(torch.float64).mean())


def functional_test(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    sets: Mapping[int, frozenset[int]],
    draws: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """``functional_acc_full``, ``functional_acc_specific``, ``functional_acc_random`` (mean of
    ``draws`` random draws) and ``functional_gain`` = specific - random.

    Args:
        features: (I, D) pooled penultimate features h(x).
        labels: (I,) integer class labels.
        weight: (C_out, D) head weight; ``bias`` (C_out,) or None.
        sets: class -> S_c (feature indices in [0, D)).
        draws: random draws of the same-size sets.
        seed: seed of the private generator of the draws.

    Raises:
        ValueError: shapes that do not fit, or a class / feature index outside the head.
    """
    h = features.detach().to("cpu", torch.float64)
    y = labels.detach().to("cpu", torch.int64).reshape(-1)
    w = weight.detach().to("cpu", torch.float64)
    b = None if bias is None else bias.detach().to("cpu", torch.float64)
    if h.dim() != 2 or w.dim() != 2 or h.shape[1] != w.shape[1] or h.shape[0] != y.numel():
        raise ValueError(f"features {tuple(h.shape)}, labels {tuple(y.shape)} and head weight "
                         f"{tuple(w.shape)} do not fit")
    n_out, n_features = w.shape
    if h.shape[0] == 0:
        raise ValueError("no probe images")
    specific = torch.zeros(n_out, n_features, dtype=torch.float64)
    for c, members in sets.items():
        if not 0 <= c < n_out or any(not 0 <= j < n_features for j in members):
            raise ValueError(f"class {c} or its features lie outside the head {tuple(w.shape)}")
        specific[c, sorted(members)] = 1.0
    sizes = specific.sum(dim=1).to(torch.int64).tolist()
    generator = torch.Generator().manual_seed(int(seed))
    random_accuracies = []
    for _ in range(draws):
        mask = torch.zeros_like(specific)
        for c, size in enumerate(sizes):
            if size:
                mask[c, torch.randperm(n_features, generator=generator)[:size]] = 1.0
        random_accuracies.append(masked_accuracy(h, y, w, b, mask))
    out = {
        "functional_acc_full": masked_accuracy(h, y, w, b, torch.ones_like(specific)),
        "functional_acc_specific": masked_accuracy(h, y, w, b, specific),
        "functional_acc_random": (sum(random_accuracies) / draws) if draws else math.nan,
    }
    out["functional_gain"] = out["functional_acc_specific"] - out["functional_acc_random"]
    return out
