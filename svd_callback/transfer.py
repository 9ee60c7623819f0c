"""Moving many small device tensors to the host with one synchronisation.

Each ``.cpu()`` of a CUDA tensor waits for the device's queue; reading the results of many
layers one by one costs one wait each. :func:`to_host` flattens the tensors of one device and
dtype, concatenates them on the device, moves that one tensor and splits it again on the host.
"""

from __future__ import annotations

import torch

__all__ = ["to_host"]


def to_host(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """``tensors`` on the CPU, with one transfer (one host synchronisation) per device and dtype:
    the tensors of a device are flattened, concatenated there, moved once and split again (CPU
    tensors too, as one copy: the caller reads them all the same way). None stays None."""
    out = list(tensors)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, tensor in enumerate(tensors):
        if tensor is not None:
            groups.setdefault((tensor.device, tensor.dtype), []).append(i)
    for members in groups.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in members]).cpu()  # the one transfer
        pieces = flat.split([tensors[i].numel() for i in members])
        for i, piece in zip(members, pieces, strict=True):
            out[i] = piece.reshape(tensors[i].shape)
    return out
