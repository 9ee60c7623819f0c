"""Signals of SVD-neurons on a probe set ("The SVD of Convolutional Weights", Praggastis et al.).

A conv weight W of shape (d, c, k...) flattens to Wbar = W.reshape(d, c*prod(k)) = U S V^T
(docs/methods.md#class-statistics). With x_p the input patch under output position p (the im2col
column of ``torch.nn.functional.unfold``, same (c, k...) order), the layer computes
y_p = Wbar x_p + b, and SVD-neuron i carries the signal

    s_i(p) = u_i^T (y_p - b) = sigma_i <v_i, x_p>.

Averaged over positions this gives one number per image and neuron:
s_i = sigma_i <v_i, mean_p x_p>. For a linear layer x_p is the input vector (averaged over any
extra leading axes, e.g. tokens). A grouped conv is block-diagonal: every group has its own SVD
and its neurons see only the group's input channels; the top-k neurons are chosen over all groups
by singular value.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ConvParams:
    """Geometry of a (non-transposed) conv layer, as in ``nn.ConvNd``."""

    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int = 1
    padding_mode: str = "zeros"

    @classmethod
    def from_module(cls, module: nn.Module) -> ConvParams:
        """Geometry of an ``nn.Conv1d/2d/3d``."""
        if not isinstance(module, _CONV_TYPES):
            raise TypeError(f"expected nn.Conv1d/2d/3d, got {type(module).__name__}")
        padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
        return cls(
            tuple(module.stride),
            padding,
            tuple(module.dilation),
            module.groups,
            module.padding_mode,
        )


@dataclass
class NeuronSignals:
    """Position-averaged signals of the top-k SVD-neurons of one layer.

    Attributes:
        values: (I, k) signals s_i, neurons ordered by decreasing sigma.
        sigma: (k,) singular values of those neurons.
        neuron: (k,) flat neuron index ``group * r + j`` (j-th singular triplet of the group).
        reason: why the values are NaN (None when computed).
        basis: ``(U (g, d/g, r), Vh (g, r, c/g * prod(k)))`` of every neuron (not only the top
            k) when asked for with ``return_basis=True``, on the CPU; None otherwise or on
            failure.
    """

    values: torch.Tensor
    sigma: torch.Tensor
    neuron: torch.Tensor
    reason: str | None = None
    basis: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class ClassMeans:
    """Per-class mean |signal| a_{c,i} (docs/methods.md#class-statistics).

    Attributes:
        values: (C, k); a row is NaN for a class without probe images (see ``reasons``).
        counts: (C,) number of probe images per class.
        reasons: class -> why its row is NaN.
        notes: remarks about the input (labels out of range, non-finite signals).
    """

    values: torch.Tensor
    counts: torch.Tensor
    reasons: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def neuron_signals(
    weight: torch.Tensor,
    layer_input: torch.Tensor,
    conv_params: ConvParams | nn.Module | None = None,
    top_k: int | None = None,
    return_basis: bool = False,
) -> NeuronSignals:
    """s_i = sigma_i <v_i, mean_p x_p> for the ``top_k`` neurons of largest sigma (all if None).

    Args:
        weight: layer weight, (d, c) for a linear layer, (d, c/groups, k...) for a conv.
        layer_input: what the layer received, (I, ..., c) for a linear layer (extra axes are
            averaged), (I, c, spatial...) for a conv.
        conv_params: :class:`ConvParams` or the conv module itself; None for a linear layer.
        top_k: number of neurons kept.
        return_basis: also return the singular vectors (:attr:`NeuronSignals.basis`).

    Computed on ``layer_input``'s device in float32. The mean patch is accumulated from one
    strided slice of the padded input per kernel offset, which equals the mean of the
    ``F.unfold`` columns without materialising the (I, c*k*k, positions) patch tensor. Bad input
    (non-finite weight, an SVD that fails, mismatched shapes) gives NaN values and a reason.
    """
    device = layer_input.device
    x = layer_input.detach().to(torch.float32)
    w = weight.detach().to(device=device, dtype=torch.float32)
    unsupported = None
    if isinstance(conv_params, nn.Module):
        if isinstance(conv_params, _CONV_TYPES):
            conv_params = ConvParams.from_module(conv_params)
        else:
            unsupported = (
                f"{type(conv_params).__name__} is not an nn.Conv1d/2d/3d: no im2col signals"
            )
            conv_params = ConvParams((1,), 0, (1,), int(getattr(conv_params, "groups", 1)))
    elif conv_params is None and w.dim() != 2:
        unsupported = f"weight of shape {tuple(w.shape)} is not a linear weight: give conv_params"
    groups = 1 if conv_params is None else int(conv_params.groups)
    n_images = x.shape[0] if x.dim() > 0 else 0
    rank_per_group = min(w.shape[0] // max(groups, 1), math.prod(w.shape[1:]))
    n_neurons = groups * rank_per_group
    k = n_neurons if top_k is None else max(0, min(int(top_k), n_neurons))

    def failed(reason: str) -> NeuronSignals:
        nan = torch.full((n_images, k), math.nan, device=device)
        return NeuronSignals(
            nan,
            torch.full((k,), math.nan, device=device),
            torch.full((k,), -1, dtype=torch.int64, device=device),
            reason,
        )

    if unsupported is not None:
        return failed(unsupported)
    if not torch.isfinite(w).all():
        return failed("weight has non-finite entries")
    try:
        if conv_params is None:
            mean_patch = _mean_linear_input(x, w)
        else:
            mean_patch = _mean_conv_patch(x, w, conv_params)
    except ValueError as error:
        return failed(str(error))
    try:
        from svd_callback.spectra import unfold_svd

        U, S, Vh = unfold_svd(w, groups)
    except (RuntimeError, ValueError) as error:  # torch.linalg.LinAlgError is a RuntimeError
        return failed(f"SVD failed: {error}")
    patch_by_group = mean_patch.reshape(n_images, groups, -1)
    values = torch.einsum("igm,grm->igr", patch_by_group, Vh.to(device)) * S.to(device)
    values, sigma = values.reshape(n_images, -1), S.to(device).reshape(-1)
    order = torch.sort(sigma, descending=True, stable=True).indices[:k]
    reason = None if torch.isfinite(mean_patch).all() else "layer input has non-finite entries"
    basis = (U.detach().cpu(), Vh.detach().cpu()) if return_basis else None
    return NeuronSignals(values[:, order], sigma[order], order, reason, basis)


def influential_neurons(values: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """DeepDataProfiler's influential SVD-neurons of each image, (I, n) bool.

    ``SVDProfiler.influential_svd_neurons`` of deep-data-profiler 2.0.1, applied to each row
    (image) of ``values`` (the position-averaged signals of :func:`neuron_signals`, columns in
    ``NeuronSignals.neuron`` order): sort |s_i| descending, keep the neurons whose cumulative
    share sum_{j <= i} |s_(j)| / sum_j |s_j| is <= ``threshold``, plus the next one. A kept
    neuron of |s_i| = 0 is not influential (DeepDataProfiler's weight is 0 there).

    Defined here where DeepDataProfiler is not: ties are sorted by neuron index (a stable sort);
    a row that is all zero or holds a non-finite value has no influential neuron
    (DeepDataProfiler divides 0 by 0 and marks the first neuron). Shares are computed in float64.

    Raises:
        ValueError: ``values`` not 2-D or ``threshold`` outside [0, 1].
    """
    if values.dim() != 2:
        raise ValueError(f"values must be (images, neurons), got shape {tuple(values.shape)}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    magnitude = values.detach().to(torch.float64).abs()
    usable = torch.isfinite(magnitude).all(dim=1)
    magnitude = torch.where(usable[:, None], magnitude, 0.0)
    ordered, order = torch.sort(magnitude, dim=1, descending=True, stable=True)
    cumulative = torch.cumsum(ordered, dim=1)
    total = cumulative[:, -1:]
    share = cumulative / total.clamp_min(torch.finfo(torch.float64).tiny)
    accepted = (share <= threshold).sum(dim=1, keepdim=True)
    rank = torch.arange(values.shape[1], device=values.device)
    kept = (rank[None, :] <= accepted) & (ordered > 0) & (total > 0)
    out = torch.zeros_like(kept)
    return out.scatter(1, order, kept)


def _mean_linear_input(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if x.dim() < 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear input of shape {tuple(x.shape)} does not match weight {tuple(w.shape)}"
        )
    return x.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1)


def _mean_conv_patch(x: torch.Tensor, w: torch.Tensor, params: ConvParams) -> torch.Tensor:
    """mean_p x_p, shape (I, c*prod(k)), in ``F.unfold``'s (c, k...) order."""
    kernel = tuple(w.shape[2:])
    dims = len(kernel)
    channels = w.shape[1] * params.groups
    if x.dim() != dims + 2 or x.shape[1] != channels:
        raise ValueError(
            f"conv input of shape {tuple(x.shape)} does not match weight {tuple(w.shape)} "
            f"with groups={params.groups}"
        )
    stride = _expand(params.stride, dims)
    dilation = _expand(params.dilation, dims)
    pads = _padding_amounts(params.padding, kernel, dilation)
    # F.pad takes (last dim left, last dim right, previous dim left, ...).
    flat_pads = [amount for pair in reversed(pads) for amount in pair]
    if any(flat_pads):
        mode = "constant" if params.padding_mode == "zeros" else params.padding_mode
        x = F.pad(x, flat_pads, mode=mode)
    sizes = x.shape[2:]
    out = [(sizes[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(dims)]
    if min(out) < 1:
        raise ValueError(f"input of spatial size {tuple(sizes)} is smaller than the kernel")
    spatial_axes = tuple(range(2, 2 + dims))
    means = []
    for offset in itertools.product(*(range(size) for size in kernel)):
        index = tuple(
            slice(
                offset[i] * dilation[i],
                offset[i] * dilation[i] + (out[i] - 1) * stride[i] + 1,
                stride[i],
            )
            for i in range(dims)
        )
        means.append(x[(slice(None), slice(None), *index)].mean(dim=spatial_axes))
    # (I, c, prod k) -> (I, c * prod k): channel-major, kernel offsets row-major, like im2col.
    return torch.stack(means, dim=-1).reshape(x.shape[0], -1)


def _expand(value: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return (int(value),) * dims if isinstance(value, int) else tuple(int(v) for v in value)


def _padding_amounts(
    padding: tuple[int, ...] | int | str, kernel: tuple[int, ...], dilation: tuple[int, ...]
) -> list[tuple[int, int]]:
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":  # as nn.ConvNd: total d*(k-1), the extra one on the right
        totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        return [(t // 2, t - t // 2) for t in totals]
    if isinstance(padding, str):
        raise ValueError(f"unknown padding {padding!r}")
    return [(p, p) for p in _expand(padding, len(kernel))]


def class_mean_signals(
    signals: NeuronSignals | torch.Tensor, labels: torch.Tensor, num_classes: int
) -> ClassMeans:
    """a_{c,i} = mean over the probe images of class c of |s_i| (docs/methods.md).

    A class with no probe image gets a NaN row and a reason; labels outside [0, num_classes)
    are ignored with a note. Never raises on bad values.
    """
    values = signals.values if isinstance(signals, NeuronSignals) else signals
    values = values.detach().to(torch.float32)
    labels = torch.as_tensor(labels).to(values.device).reshape(-1).to(torch.int64)
    notes: list[str] = []
    if labels.numel() != values.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {values.shape[0]} signal rows")
    valid = (labels >= 0) & (labels < num_classes)
    if not bool(valid.all()):
        notes.append(f"{int((~valid).sum())} labels outside [0, {num_classes}) ignored")
    one_hot = F.one_hot(labels[valid], num_classes).to(values.dtype)
    sums = one_hot.T @ values[valid].abs()
    counts = one_hot.sum(dim=0)
    means = sums / counts.clamp_min(1).unsqueeze(1)
    means[counts == 0] = math.nan
    reasons = {
        int(c): "class absent from the probe set" for c in torch.nonzero(counts == 0).flatten()
    }
    if not bool(torch.isfinite(values[valid]).all()):
        notes.append("non-finite signals: the classes holding them have non-finite means")
    return ClassMeans(means, counts.to(torch.int64), reasons, notes)
