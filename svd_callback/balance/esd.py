"""TempBalance's per-layer ESD and its Hill-type power-law fits (Zhou et al., NeurIPS 2023,
``tempbalance.py`` of github.com/YefanZhou/TempBalance, ``net_esd_estimator``).

The arithmetic follows the reference step by step (same tensor operations, same dtype, same
order) so that its learning rates are reproduced to rounding; only its ``.cuda()`` calls are
replaced by the weight's own device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

TEMPBALANCE_FITS = ("median", "goodness-of-fit", "fix-finger")
"""TempBalance's ways of choosing xmin for its Hill fit (``fit=`` of :func:`fit_alpha`); the
monitor's own power-law fits are :data:`svd_callback.config.FITS`."""


@dataclass(frozen=True)
class LayerESD:
    """One layer's TempBalance fit.

    ``eigs`` are the ascending eigenvalues (squared singular values), ``alpha`` the Hill
    exponent, ``D`` the KS distance of the fitted tail, ``alphahat = alpha * log10(lambda_max)``,
    ``spectral_norm = lambda_max`` and ``norm = sum(eigs)`` (the reference's names).
    """

    name: str
    eigs: torch.Tensor
    alpha: float
    D: float
    alphahat: float
    spectral_norm: float
    norm: float

    @property
    def eigs_num(self) -> int:
        """Number of eigenvalues (all of them, before ``filter_zeros``)."""
        return int(self.eigs.numel())

    def score(self, metric: str) -> float:
        """The per-layer value that drives the assignment (``alpha``, ``alphahat``, ``D``,
        ``spectral_norm``, ``norm`` or ``eigs_num``)."""
        if metric == "eigs_num":
            return float(self.eigs_num)
        if metric not in ("alpha", "alphahat", "D", "spectral_norm", "norm"):
            raise ValueError(f"unknown metric {metric!r}")
        return float(getattr(self, metric))


def esd_matrix(module: nn.Module, weight: torch.Tensor, conv_norm: float) -> torch.Tensor:
    """The matrices whose singular values form the layer's ESD.

    ``nn.Linear``: the weight ``W`` (out x in). ``nn.Conv2d``: the ``kh*kw`` slices
    ``sqrt(conv_norm) * W[:, :, i, j]`` (out x in/groups), stacked on dim 0 (the reference's
    ``flatten(start_dim=2) * sqrt(conv_norm)`` then ``transpose(1, 2).transpose(0, 1)``).
    """
    matrix = weight.detach().clone()
    if isinstance(module, nn.Conv2d):
        matrix = torch.flatten(matrix, start_dim=2) * math.sqrt(conv_norm)
        matrix = matrix.transpose(1, 2).transpose(0, 1)
    return matrix


def layer_eigs(matrix: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues ``sigma_i^2`` of every slice, pooled: ``sort(svdvals(M)^2)``."""
    eigs = torch.square(torch.linalg.svdvals(matrix).flatten())
    eigs, _ = torch.sort(eigs, descending=False)
    return eigs


def _hill(log_nz_eigs: torch.Tensor, i: int, n: float) -> torch.Tensor:
    """Continuous power-law MLE with ``xmin = lambda_i`` (Clauset et al. 2009, eq. 3.1):
    ``alpha = 1 + n / sum_{k >= i} ln(lambda_k / lambda_i)``, ``n = N - i``."""
    return 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])


def _ks(nz_eigs: torch.Tensor, i: int, n: float, alpha: torch.Tensor) -> torch.Tensor:
    """The reference's KS distance: ``max_k |1 - (lambda_k / xmin)^(1 - alpha) - k / n|``."""
    seq = torch.arange(n, device=nz_eigs.device)
    return torch.max(torch.abs(1 - (nz_eigs[i:] / nz_eigs[i]) ** (-alpha + 1) - seq / n))


def fit_alpha(
    eigs: torch.Tensor,
    *,
    fit: str = "median",
    xmin_pos: float = 2,
    filter_zeros: bool = False,
    evals_thresh: float = 1e-5,
    bins: int = 100,
) -> tuple[float, float]:
    """``(alpha, D)`` of ascending ``eigs``.

    - ``median``: ``xmin = lambda_i``, ``i = int(N / xmin_pos)`` (the median for ``xmin_pos=2``).
    - ``goodness-of-fit``: every ``xmin`` but the largest; the ``alpha`` of the smallest ``D``
      (first on ties); a candidate with ``alpha <= 1`` keeps ``D = 1``.
    - ``fix-finger``: the same scan restricted to ``xmin <= 1.5 * peak``, ``peak`` the left edge
      of the fullest of ``bins`` log10-histogram bins. The reference's lower bound compares
      ``xmin`` with ``log10(0.95 * peak)``; it is kept as is.

    ``filter_zeros`` drops eigenvalues ``<= evals_thresh`` (all are kept if none is left).
    """
    if fit not in TEMPBALANCE_FITS:
        raise ValueError(f"fit must be one of {TEMPBALANCE_FITS}, got {fit!r}")
    if filter_zeros:
        nz_eigs = eigs[eigs > evals_thresh]
        if len(nz_eigs) == 0:
            nz_eigs = eigs
    else:
        nz_eigs = eigs
    N = len(nz_eigs)
    log_nz_eigs = torch.log(nz_eigs)
    if fit == "median":
        i = int(len(nz_eigs) / xmin_pos)
        n = float(N - i)
        alpha = _hill(log_nz_eigs, i, n)
        return alpha.item(), _ks(nz_eigs, i, n, alpha).item()

    device = nz_eigs.device  # the reference keeps these two (default dtype) on the CPU
    alphas = torch.zeros(N - 1, device=device)
    Ds = torch.ones(N - 1, device=device)
    if fit == "fix-finger":
        hist_nz_eigs = torch.log10(nz_eigs)
        min_e, max_e = hist_nz_eigs.min(), hist_nz_eigs.max()
        counts = torch.histc(hist_nz_eigs, bins, min=min_e, max=max_e)
        boundaries = torch.linspace(min_e.item(), max_e.item(), bins + 1, device=device)
        peak = 10 ** boundaries[torch.argmax(counts)]
        xmin_min = torch.log10(0.95 * peak)
        xmin_max = 1.5 * peak
    for i, xmin in enumerate(nz_eigs[:-1]):
        if fit == "fix-finger":
            if xmin < xmin_min:
                continue
            if xmin > xmin_max:
                break
        n = float(N - i)
        alpha = _hill(log_nz_eigs, i, n)
        alphas[i] = alpha
        if alpha > 1:
            Ds[i] = _ks(nz_eigs, i, n, alpha)
    best = torch.argmin(Ds)
    return alphas[best].item(), Ds[best].item()


def layer_esd(
    name: str,
    module: nn.Module,
    weight: torch.Tensor,
    *,
    conv_norm: float = 0.5,
    fit: str = "median",
    xmin_pos: float = 2,
    filter_zeros: bool = False,
    evals_thresh: float = 1e-5,
    bins: int = 100,
) -> LayerESD:
    """The TempBalance ESD and fit of one ``nn.Conv2d`` / ``nn.Linear`` weight.

    The weight's dtype is kept (as in the reference); half and bfloat16 weights are decomposed
    in float32.
    """
    if weight.dtype in (torch.float16, torch.bfloat16):
        weight = weight.float()
    with torch.no_grad():
        eigs = layer_eigs(esd_matrix(module, weight, conv_norm))
        alpha, D = fit_alpha(
            eigs, fit=fit, xmin_pos=xmin_pos, filter_zeros=filter_zeros,
            evals_thresh=evals_thresh, bins=bins,
        )
    spectral_norm = eigs[-1].item()
    alphahat = alpha * math.log10(spectral_norm) if spectral_norm > 0 else float("nan")
    return LayerESD(
        name=name, eigs=eigs.detach().cpu(), alpha=alpha, D=D, alphahat=alphahat,
        spectral_norm=spectral_norm, norm=torch.sum(eigs).item(),
    )
