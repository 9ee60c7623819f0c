"""Class-specific features of the penultimate layer (Badola et al., "Decomposing the Deep").

Recipe (docs/methods.md#class-statistics), with h(x) >= 0 the D global-average-pooled post-ReLU
features:

1. per image, p = h / ||h||_1 sorted descending; m(x) = the smallest number of features whose
   share reaches the mass k (cumsum(p)[m-1] >= k);
2. per class c, kbar_c = floor(mean of m(x) over the class's images); every image of the class
   votes for the features in its own top-kbar_c, giving a histogram n_c[j] of votes;
3. S_c = the smallest set of most-voted features whose votes reach the share k of all the
   class's votes: features sorted by decreasing n_c[j] (ties: lower index first), the shortest
   prefix with cumsum(n_c)/sum(n_c) >= k;
4. report |S_c| / D per class and its mean over classes, the selectivity
   Psi = (D - median_x m(x)) / D (median over all probe images, averaging the two middle values
   for an even count), and the Jaccard of S_c with the previous epoch's S_c.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from svd_callback.classes.hypergraph import jaccard
from svd_callback.layers import named_modules

_SLACK = 1e-6
"""Relative slack on mass thresholds, so that a share reaching k up to rounding counts."""


@dataclass
class ClassFeatures:
    """Class-specific feature sets of one layer on one probe set.

    Attributes:
        n_features: D.
        sets: class -> S_c (feature indices); classes without usable images are missing.
        size_fraction: (C,) |S_c| / D, NaN for a missing class.
        kbar: (C,) floor(mean m(x)) per class, NaN for a missing class.
        m_per_image: (I,) m(x), NaN for an image with no positive feature.
        selectivity: Psi = (D - median m) / D over all usable images.
        selectivity_per_class: (C,) the same over each class's images.
        jaccard_previous: class -> J(S_c, previous S_c) for classes present in both.
        reasons: class -> why it has no set.
        notes: remarks about the input (negative features clipped, empty images).
    """

    n_features: int
    sets: dict[int, frozenset[int]]
    size_fraction: torch.Tensor
    kbar: torch.Tensor
    m_per_image: torch.Tensor
    selectivity: float
    selectivity_per_class: torch.Tensor
    jaccard_previous: dict[int, float] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def scalars(self) -> dict[str, float]:
        """Model-level numbers for logging (NaN where undefined)."""
        fractions = self.size_fraction[torch.isfinite(self.size_fraction)]
        stable = [v for v in self.jaccard_previous.values() if not math.isnan(v)]
        return {
            "feature_fraction_mean": float(fractions.mean()) if fractions.numel() else math.nan,
            "feature_count_mean": (
                float(fractions.mean()) * self.n_features if fractions.numel() else math.nan
            ),
            "selectivity": self.selectivity,
            "feature_jaccard_previous_mean": sum(stable) / len(stable) if stable else math.nan,
        }


def pool_features(features: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """(I, D): ``features`` averaged over every axis but the batch and ``channel_dim``."""
    features = features.detach().to(torch.float32)
    if features.dim() == 2:
        return features
    features = features.movedim(channel_dim, -1)
    return features.reshape(features.shape[0], -1, features.shape[-1]).mean(dim=1)


def mass_counts(features: torch.Tensor, mass: float = 0.5) -> torch.Tensor:
    """m(x) per row of an (I, D) non-negative matrix; NaN for a row summing to zero."""
    totals = features.sum(dim=1, keepdim=True)
    shares = torch.sort(
        features / totals.clamp_min(torch.finfo(features.dtype).tiny), dim=1, descending=True
    ).values
    reached = torch.cumsum(shares, dim=1) >= mass * (1 - _SLACK)
    counts = (reached.to(torch.int64).argmax(dim=1) + 1).to(features.dtype)
    return torch.where(totals.squeeze(1) > 0, counts, math.nan)


def class_specific_features(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mass: float = 0.5,
    previous: ClassFeatures | Mapping[int, frozenset[int]] | None = None,
    channel_dim: int = 1,
) -> ClassFeatures:
    """Badola et al.'s class-specific feature sets S_c (recipe in the module docstring).

    Args:
        features: (I, D) pooled features or (I, D, spatial...) maps (pooled here; for
            (I, tokens, D) pass ``channel_dim=-1``). Negative values are clipped to 0 with a note
            (the recipe assumes post-ReLU features).
        labels: (I,) class labels; labels outside [0, num_classes) are ignored with a note.
        num_classes: C.
        mass: the mass k in (0, 1].
        previous: the previous epoch's result (or its ``sets``) for the stability Jaccard.
        channel_dim: feature axis of unpooled ``features``.

    Raises:
        ValueError: ``mass`` outside (0, 1] or a label count that does not match.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    h = pool_features(features, channel_dim)
    labels = torch.as_tensor(labels).to(h.device).reshape(-1).to(torch.int64)
    if labels.numel() != h.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {h.shape[0]} feature rows")
    n_features = int(h.shape[1])
    notes: list[str] = []
    finite_rows = torch.isfinite(h).all(dim=1)
    if not bool(finite_rows.all()):
        notes.append(f"{int((~finite_rows).sum())} images with non-finite features ignored")
        h = torch.where(finite_rows[:, None], h, 0.0)
    negative = h < 0
    if bool(negative.any()):
        share = float(h[negative].abs().sum() / h.abs().sum())
        notes.append(f"negative features clipped to 0 ({share:.1%} of the L1 mass)")
        h = h.clamp_min(0.0)
    m_per_image = mass_counts(h, mass)
    if bool(torch.isnan(m_per_image[finite_rows]).any()):
        notes.append("images whose features are all zero have no m(x) and are ignored")
    in_range = (labels >= 0) & (labels < num_classes)
    if not bool(in_range.all()):
        notes.append(f"{int((~in_range).sum())} labels outside [0, {num_classes}) ignored")
    usable = torch.isfinite(m_per_image) & in_range

    ranks = torch.argsort(torch.argsort(h, dim=1, descending=True, stable=True), dim=1)
    sets: dict[int, frozenset[int]] = {}
    size_fraction = torch.full((num_classes,), math.nan, dtype=torch.float64)
    kbar = torch.full((num_classes,), math.nan, dtype=torch.float64)
    selectivity_per_class = torch.full((num_classes,), math.nan, dtype=torch.float64)
    reasons: dict[int, str] = {}
    present = torch.bincount(labels[usable], minlength=num_classes).tolist()
    for c in range(num_classes):
        if present[c] == 0:
            reasons[c] = "class absent from the probe set (or no image with positive features)"
            continue
        members = usable & (labels == c)
        m_class = m_per_image[members]
        kbar_c = int(math.floor(float(m_class.double().mean())))
        votes = (ranks[members] < kbar_c).sum(dim=0).to(torch.float64)
        sets[c] = _smallest_prefix_reaching(votes, mass)
        size_fraction[c] = len(sets[c]) / n_features
        kbar[c] = kbar_c
        selectivity_per_class[c] = (n_features - float(torch.quantile(m_class.double(), 0.5))) / (
            n_features
        )
    m_usable = m_per_image[usable].double()
    selectivity = (
        (n_features - float(torch.quantile(m_usable, 0.5))) / n_features
        if m_usable.numel()
        else math.nan
    )
    previous_sets = previous.sets if isinstance(previous, ClassFeatures) else previous
    stability = (
        {c: jaccard(s, previous_sets[c]) for c, s in sets.items() if c in previous_sets}
        if previous_sets is not None
        else {}
    )
    return ClassFeatures(
        n_features,
        sets,
        size_fraction,
        kbar,
        m_per_image,
        selectivity,
        selectivity_per_class,
        stability,
        reasons,
        notes,
    )


def _smallest_prefix_reaching(votes: torch.Tensor, mass: float) -> frozenset[int]:
    """Most-voted features (ties: lower index first) until their share of votes reaches mass."""
    total = float(votes.sum())
    if total <= 0:
        return frozenset()
    order = torch.sort(votes, descending=True, stable=True).indices
    shares = torch.cumsum(votes[order], dim=0) / total
    size = int((shares >= mass * (1 - _SLACK)).to(torch.int64).argmax()) + 1
    return frozenset(order[:size].tolist())


def find_penultimate_layer(model: nn.Module) -> tuple[str | None, str | None]:
    """``(name, None)`` of the last ``nn.Linear`` whose *input* holds the penultimate features.

    Heuristic: the classifier head is the last ``nn.Linear`` in ``named_modules()`` (registration)
    order, and its input is the pooled penultimate representation h(x); capture that module's
    input. Returns ``(None, reason)`` when the model has no ``nn.Linear`` or the last one has a
    single output (a regression / binary-logit head, for which classes of features do not apply).
    Registration order need not be execution order: pass the layer explicitly for exotic models.
    """
    last: tuple[str, nn.Linear] | None = None
    for name, module in named_modules(model):
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        return None, "no nn.Linear layer: cannot locate a classifier head"
    name, module = last
    if module.out_features == 1:
        return None, (
            f"last nn.Linear {name!r} has a single output (regression or binary-logit head): "
            "no class head to take the penultimate features from"
        )
    return name, None
