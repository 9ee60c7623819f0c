"""Identity of SVD-neurons across analyses: neurons are matched by their singular vectors, not by
the rank of their singular value (docs/methods.md#class-statistics).

Neuron i of a layer is the rank-one component u_i v_i^T of its (per-group) unfold matrix. Two
neurons i (previous analysis) and j (current) are compared by the |cosine| of their components,

    cos(i, j) = |<u_i v_i^T, u'_j v'_j^T>_F| = |<u_i, u'_j>| |<v_i, v'_j>|

(unit vectors, so this is the cosine of the two rank-one matrices; it ignores the sign of the
pair, which the SVD does not fix). Neurons of different groups of a grouped conv act on different
channels: their cosine is 0. The matching maximises the sum of the matched cosines
(Hungarian assignment, ``scipy.optimize.linear_sum_assignment``); its mean measures how much the
basis rotated between the analyses (1: the same vectors, possibly reordered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["NeuronMatch", "component_cosines", "match_neurons"]

Basis = tuple[torch.Tensor, torch.Tensor]
"""``(U (g, d/g, r), Vh (g, r, m))`` of one layer, as :func:`svd_callback.spectra.unfold_svd`."""


@dataclass
class NeuronMatch:
    """Previous neurons matched to current ones (flat indices ``group * r + j``).

    Attributes:
        previous_to_current: (n_prev,) int64, the current neuron matched to each previous one
            (-1: unmatched, when the current layer has fewer neurons).
        cosine: (n_prev,) float64 matched |cosine| (NaN where unmatched).
        mean_cosine: mean of the matched |cosines| (NaN with no match).
        reason: why nothing could be matched (None otherwise).
    """

    previous_to_current: torch.Tensor
    cosine: torch.Tensor
    mean_cosine: float
    reason: str | None = None


def component_cosines(previous: Basis, current: Basis) -> torch.Tensor:
    """(n_prev, n_cur) float64 |<u_i, u'_j>| |<v_i, v'_j>|, zero across groups.

    Raises:
        ValueError: the two bases have different groups or vector lengths.
    """
    u0, vh0 = (t.detach().to("cpu", torch.float64) for t in previous)
    u1, vh1 = (t.detach().to("cpu", torch.float64) for t in current)
    if u0.shape[:2] != u1.shape[:2] or vh0.shape[::2] != vh1.shape[::2]:
        raise ValueError(f"bases of shapes U {tuple(u0.shape)}, Vh {tuple(vh0.shape)} and "
                         f"U {tuple(u1.shape)}, Vh {tuple(vh1.shape)} are not comparable")
    blocks = (u0.mT @ u1).abs() * (vh0 @ vh1.mT).abs()  # (g, r0, r1)
    return torch.block_diag(*blocks)


def match_neurons(previous: Basis, current: Basis) -> NeuronMatch:
    """The assignment of previous to current neurons maximising the summed |cosine|.

    Never raises: incomparable bases give an empty match and a reason.
    """
    try:
        cosines = component_cosines(previous, current)
    except ValueError as error:
        n_prev = int(previous[1].shape[0] * previous[1].shape[1])
        return NeuronMatch(torch.full((n_prev,), -1, dtype=torch.int64),
                           torch.full((n_prev,), math.nan, dtype=torch.float64), math.nan,
                           f"neurons not matched: {error}")
    from scipy.optimize import linear_sum_assignment  # loaded here: ~0.3 s at import

    rows, cols = linear_sum_assignment(cosines.numpy(), maximize=True)
    n_prev = cosines.shape[0]
    mapping = torch.full((n_prev,), -1, dtype=torch.int64)
    matched = torch.full((n_prev,), math.nan, dtype=torch.float64)
    rows_t, cols_t = torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols,
                                                                              dtype=torch.int64)
    mapping[rows_t] = cols_t
    matched[rows_t] = cosines[rows_t, cols_t]
    mean = float(matched[rows_t].mean()) if rows_t.numel() else math.nan
    return NeuronMatch(mapping, matched, mean, None if rows_t.numel() else "no neurons")
