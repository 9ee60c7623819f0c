"""Factorization rank of a layer's activations (Saini & Papalexakis, 2018; docs/methods.md).

The post-ReLU activations of I probe images form a non-negative 3-way tensor X (I x C x HW). For
F = 1..Fmax a non-negative CP model [[A, B, C]] is fitted by HALS (batched torch ops by default,
or TensorLy's ``non_negative_parafac_hals`` on its PyTorch backend; several random starts from a
private generator, best fit kept), and the core consistency diagnostic of Bro & Kiers (2003) is
computed:

    G = X x1 A^+ x2 B^+ x3 C^+   (least-squares Tucker core for the CP factors),
    CORCONDIA(F) = 100 (1 - ||G - T||_F^2 / F),  T = the F x F x F superdiagonal identity.

A CP model that is appropriate for the data has G close to T (CORCONDIA near 100); too many
components make G far from superdiagonal (CORCONDIA falls, often below 0). The rank reported is
the largest F with CORCONDIA >= ``threshold`` and an acceptable fit, where acceptable means the
fit 1 - ||X - Xhat||_F / ||X||_F is not more than ``fit_tolerance`` below the best fit of a
smaller F (a lower fit signals a start that did not converge, whose diagnostic is meaningless).

Cost: the tensor is first bounded (spatial positions average-pooled to at most ``max_positions``,
the first ``max_images`` images kept, then the channels of largest energy until at most
``max_elements`` entries), so one HALS sweep costs O(S * F * max_elements) flops for S starts,
and at these sizes the time is dominated by per-operation overhead, i.e. proportional to
sum_F F * n_iter_max (timings: docs/methods.md#measurements-behind-the-choices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "FactorizationResult",
    "bound_tensor",
    "corcondia",
    "factorization_rank",
]


@dataclass
class FactorizationResult:
    """Chosen CP rank and the curves it was chosen from.

    Attributes:
        rank: chosen F (None when no F qualifies or the input is unusable; see ``reason``).
        fits: (Fmax,) best fit 1 - ||X - Xhat|| / ||X|| per F (float64, CPU).
        corcondia: (Fmax,) CORCONDIA of that best fit per F.
        shape: shape (I, C, P) of the tensor actually factorised.
        reason: why ``rank`` is None.
        notes: remarks (subsampling, clipping, rank cap).
    """

    rank: int | None
    fits: torch.Tensor
    corcondia: torch.Tensor
    shape: tuple[int, int, int]
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def scalars(self) -> dict[str, float]:
        """Numbers for logging: the rank (NaN if none), its fit and CORCONDIA."""
        if self.rank is None:
            return {
                "factorization_rank": math.nan,
                "factorization_fit": math.nan,
                "factorization_corcondia": math.nan,
            }
        return {
            "factorization_rank": float(self.rank),
            "factorization_fit": float(self.fits[self.rank - 1]),
            "factorization_corcondia": float(self.corcondia[self.rank - 1]),
        }


def corcondia(tensor: torch.Tensor, factors: list[torch.Tensor]) -> float:
    """100 (1 - ||G - T||_F^2 / F) for a 3-way tensor and CP factors (weights absorbed)."""
    a, b, c = (torch.linalg.pinv(f) for f in factors)
    core = torch.einsum("ijk,ai,bj,ck->abc", tensor, a, b, c)
    rank = core.shape[0]
    target = torch.zeros_like(core)
    diagonal = torch.arange(rank, device=core.device)
    target[diagonal, diagonal, diagonal] = 1.0
    return float(100.0 * (1.0 - ((core - target) ** 2).sum() / rank))


def bound_tensor(
    activations: torch.Tensor,
    max_images: int = 64,
    max_positions: int = 16,
    max_elements: int = 2**16,
) -> tuple[torch.Tensor, list[str]]:
    """(I, C, P) tensor of at most ``max_elements`` entries, and notes on what was reduced.

    Spatial maps are average-pooled (adaptively) to at most ``max_positions`` positions, the first
    ``max_images`` images are kept (a round-robin probe keeps its class balance in any prefix),
    then the channels of largest energy are kept, as many as fit in ``max_elements``.
    """
    x = activations.detach()
    notes: list[str] = []
    if x.dim() == 4:
        height, width = x.shape[2:]
        if height * width > max_positions:
            side = max(1, int(math.isqrt(max_positions)))
            grid = (min(height, side), min(width, max(1, max_positions // min(height, side))))
            x = F.adaptive_avg_pool2d(x.to(torch.float32), grid)
            notes.append(f"spatial {height}x{width} average-pooled to {grid[0]}x{grid[1]}")
        x = x.flatten(2)
    elif x.dim() == 3:
        if x.shape[2] > max_positions:
            notes.append(f"{x.shape[2]} positions average-pooled to {max_positions}")
            x = F.adaptive_avg_pool1d(x.to(torch.float32), max_positions)
    else:
        raise ValueError(
            f"expected activations of shape (I, C, H, W) or (I, C, P), got {tuple(x.shape)}"
        )
    if x.shape[0] > max_images:
        notes.append(f"first {max_images} of {x.shape[0]} images kept")
        x = x[:max_images]
    max_channels = max(1, max_elements // max(1, x.shape[0] * x.shape[2]))
    if x.shape[1] > max_channels:
        energy = (x.to(torch.float32) ** 2).sum(dim=(0, 2))
        keep = torch.sort(torch.topk(energy, max_channels).indices).values
        notes.append(f"{max_channels} of {x.shape[1]} channels kept (largest energy)")
        x = x[:, keep]
    return x, notes


def factorization_rank(
    activations: torch.Tensor,
    max_rank: int = 6,
    threshold: float = 80.0,
    n_starts: int = 3,
    seed: int = 0,
    n_iter_max: int = 100,
    tol: float = 1e-6,
    fit_tolerance: float = 0.01,
    max_images: int = 64,
    max_positions: int = 16,
    max_elements: int = 2**16,
    engine: str = "torch",
) -> FactorizationResult:
    """Largest non-negative CP rank F <= ``max_rank`` with CORCONDIA(F) >= ``threshold``.

    Args:
        activations: (I, C, H, W) or (I, C, P) post-ReLU activations (negatives clipped to 0
            with a note).
        max_rank: Fmax (capped at the smallest tensor dimension).
        threshold: CORCONDIA threshold in percent.
        n_starts: random starts per F; the start of lowest reconstruction error is kept (the
            torch engine fits all starts at once, batched).
        seed: seed of the private generator for the starts (the global RNG is not used).
        n_iter_max, tol: HALS iteration cap and convergence tolerance on the relative error.
        fit_tolerance: how far below the best smaller-F fit a fit may fall and stay acceptable.
        max_images, max_positions, max_elements: size bounds, see :func:`bound_tensor`.
        engine: ``"torch"`` (HALS written with batched torch ops, default) or ``"tensorly"``
            (TensorLy's ``non_negative_parafac_hals`` on its PyTorch backend). Both run HALS from
            the same random starts; TensorLy's updates each factor row by row with a host sync
            per step, about 10x slower on small tensors (see the benchmark).

    Raises:
        ValueError: an unknown ``engine``.

    Never raises on bad values: non-finite or all-zero activations give ``rank=None`` and a
    reason.
    """
    if engine not in ("torch", "tensorly"):
        raise ValueError(f"engine must be 'torch' or 'tensorly', got {engine!r}")
    try:
        x, notes = bound_tensor(activations, max_images, max_positions, max_elements)
    except ValueError as error:
        empty = torch.empty(0, dtype=torch.float64)
        return FactorizationResult(None, empty, empty, (0, 0, 0), str(error))
    x = x.to(torch.float64)
    shape = (int(x.shape[0]), int(x.shape[1]), int(x.shape[2]))
    cap = min(max_rank, *shape)
    if cap < max_rank:
        notes.append(f"max_rank capped at {cap}, the smallest tensor dimension")
    fits = torch.full((max(cap, 0),), math.nan, dtype=torch.float64)
    curve = torch.full((max(cap, 0),), math.nan, dtype=torch.float64)

    def give_up(reason: str) -> FactorizationResult:
        return FactorizationResult(None, fits, curve, shape, reason, notes)

    if x.numel() == 0 or cap < 1:
        return give_up("empty activation tensor")
    if not bool(torch.isfinite(x).all()):
        return give_up("activations have non-finite entries")
    if bool((x < 0).any()):
        notes.append("negative activations clipped to 0 (non-negative CP needs post-ReLU input)")
        x = x.clamp_min(0.0)
    norm = torch.linalg.vector_norm(x)
    if float(norm) == 0.0:
        return give_up("activations are all zero")
    x = x / norm  # scale-free: fits and CORCONDIA do not depend on it

    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    for rank in range(1, cap + 1):
        best: tuple[float, list[torch.Tensor]] | None = None
        for factors in _fit_nonnegative_cp(x, rank, generator, n_iter_max, tol, n_starts, engine):
            fit = _fit(x, factors)
            if math.isfinite(fit) and (best is None or fit > best[0]):
                best = (fit, factors)
        if best is None:
            continue
        fits[rank - 1] = best[0]
        try:
            curve[rank - 1] = corcondia(x, best[1])
        except RuntimeError:  # pinv did not converge: leave NaN
            notes.append(f"CORCONDIA failed at F={rank}")

    chosen = None
    best_smaller_fit = -math.inf
    for rank in range(1, cap + 1):
        fit, cc = float(fits[rank - 1]), float(curve[rank - 1])
        acceptable = math.isfinite(fit) and fit >= best_smaller_fit - fit_tolerance
        if acceptable and math.isfinite(cc) and cc >= threshold:
            chosen = rank
        if math.isfinite(fit):
            best_smaller_fit = max(best_smaller_fit, fit)
    if chosen is None:
        return give_up(
            f"no rank in 1..{cap} reaches CORCONDIA >= {threshold} with an acceptable fit"
        )
    return FactorizationResult(chosen, fits, curve, shape, None, notes)


def _random_starts(
    x: torch.Tensor, rank: int, n_starts: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """(S, n, F) uniform [0, 1) factors per mode from the private generator, each start scaled
    so that its model has the norm of ``x``."""
    init = [
        torch.rand(n_starts, size, rank, generator=generator, device=x.device, dtype=x.dtype)
        for size in x.shape
    ]
    start_norm = torch.linalg.vector_norm(torch.einsum("sir,sjr,skr->sijk", *init), dim=(1, 2, 3))
    scale = torch.linalg.vector_norm(x) / start_norm.clamp_min(1e-300)
    init[-1] = init[-1] * scale.reshape(-1, 1, 1)
    return init


def _fit_nonnegative_cp(
    x: torch.Tensor,
    rank: int,
    generator: torch.Generator,
    n_iter_max: int,
    tol: float,
    n_starts: int,
    engine: str,
) -> list[list[torch.Tensor]]:
    """Non-negative CP of a 3-way tensor from ``n_starts`` random starts: one list of factors
    (weights absorbed) per start."""
    starts = _random_starts(x, rank, max(1, n_starts), generator)
    if engine == "tensorly":
        return [
            _tensorly_hals(x, [f[s] for f in starts], n_iter_max, tol)
            for s in range(starts[0].shape[0])
        ]
    fitted = _torch_hals(x, starts, n_iter_max, tol)
    return [[f[s] for f in fitted] for s in range(fitted[0].shape[0])]


_MTTKRP_BATCHED = ("ijk,sjr,skr->sir", "ijk,sir,skr->sjr", "ijk,sir,sjr->skr")


def _torch_hals(
    x: torch.Tensor, factors: list[torch.Tensor], n_iter_max: int, tol: float
) -> list[torch.Tensor]:
    """HALS (Cichocki & Phan 2009; Gillis & Glineur 2012) for a batch of S starts at once.

    ``factors`` are (S, n, F) per mode. For mode n with M = X_(n) (Khatri-Rao of the other
    factors) and V = Hadamard product of their Gram matrices, column f becomes
    max(eps, a_f + (M_f - A V_f) / V_ff), one column sweep per mode and iteration. The relative
    error ||X - Xhat|| / ||X|| comes cheaply from the last mode's M, as in TensorLy
    (||Xhat||^2 = sum of the Hadamard product of all Grams, <X, Xhat> = sum(M * A)); the loop
    stops once every start's error changes by less than ``tol`` between iterations (TensorLy's
    criterion).
    """
    eps = torch.finfo(x.dtype).eps
    x_norm_sq = torch.linalg.vector_norm(x) ** 2
    previous_error = torch.full((factors[0].shape[0],), math.inf, dtype=x.dtype, device=x.device)
    for _ in range(n_iter_max):
        for mode in range(3):
            others = [factors[m] for m in range(3) if m != mode]
            mttkrp = torch.einsum(_MTTKRP_BATCHED[mode], x, *others)
            gram = (others[0].mT @ others[0]) * (others[1].mT @ others[1])  # (S, F, F)
            diagonal = torch.diagonal(gram, dim1=1, dim2=2).clamp_min(eps)  # (S, F)
            factor = factors[mode]
            for f in range(factor.shape[2]):
                product = (factor @ gram[:, :, f : f + 1]).squeeze(2)  # (S, n)
                step = (mttkrp[:, :, f] - product) / diagonal[:, f : f + 1]
                factor[:, :, f] = (factor[:, :, f] + step).clamp_min(eps)
        model_norm_sq = (gram * (factor.mT @ factor)).sum(dim=(1, 2))
        inner = (mttkrp * factor).sum(dim=(1, 2))
        error = torch.sqrt((x_norm_sq + model_norm_sq - 2 * inner).abs() / x_norm_sq)
        if bool(((previous_error - error).abs() < tol).all()):
            break
        previous_error = error
    return factors


def _tensorly_hals(
    x: torch.Tensor, factors: list[torch.Tensor], n_iter_max: int, tol: float
) -> list[torch.Tensor]:
    """TensorLy's ``non_negative_parafac_hals`` on its PyTorch backend, from the given start."""
    import tensorly as tl
    from tensorly.cp_tensor import CPTensor
    from tensorly.decomposition import non_negative_parafac_hals

    rank = factors[0].shape[1]
    ones = torch.ones(rank, dtype=x.dtype, device=x.device)
    # backend_context restores the previous backend on exit; local_threadsafe keeps the switch
    # to this thread.
    with tl.backend_context("pytorch", local_threadsafe=True):
        weights, fitted = non_negative_parafac_hals(
            x, rank, n_iter_max=n_iter_max, init=CPTensor((ones, factors)), tol=tol
        )
    fitted = [f.clone() for f in fitted]
    fitted[0] = fitted[0] * weights.reshape(1, -1)
    return fitted


def _fit(x: torch.Tensor, factors: list[torch.Tensor]) -> float:
    model = torch.einsum("ir,jr,kr->ijk", *factors)
    return float(1.0 - torch.linalg.vector_norm(x - model) / torch.linalg.vector_norm(x))
