"""Which layers feed a normalisation layer: their output is scale-invariant.

A conv or linear layer W followed by BatchNorm (or GroupNorm) computes
BN(c W x) = BN(W x) for every c > 0 in training mode (the batch statistics absorb the scale;
Ioffe & Szegedy 2015, sec. 3.1; van Laarhoven 2017, "L2 regularization versus batch and weight
normalization"). The absolute size of W, its norms, says nothing about what the layer
computes, so alert rules judge such layers by scale-free quantities (docs/methods.md).

Detection, from the model structure only (no forward pass):

- inside an ``nn.Sequential``: a layer immediately followed by a normalisation module
  (``Conv2d, BatchNorm2d``; torchvision's ``downsample = Sequential(conv, bn)``);
- siblings named ``<prefix>conv<k>`` and ``<prefix>bn<k>`` (or ``norm<k>``) in one parent
  module: torchvision ResNet's ``conv1 -> bn1``, ``conv2 -> bn2``, ``conv3 -> bn3``;

and in both cases only when the normaliser's ``num_features`` / ``num_channels`` equals the
layer's number of outputs.

Limits: a normalisation applied in ``forward`` without a module (``F.batch_norm``), reached
through other names, or after an activation (``conv -> ReLU -> BN``, also scale-invariant for
c > 0) is not detected; a residual sum between the layer and the normaliser is not checked
(the structures above do not have one). In eval mode BN uses running statistics, so the
invariance holds for the training dynamics, not for a frozen model's outputs.
"""

from __future__ import annotations

import re

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from svd_callback.layers import original_name

NORMALIZER_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm, nn.GroupNorm)
_LAYER_TYPES = (nn.Linear, _ConvNd)
_NAME = re.compile(r"^(?P<prefix>.*?)(?:conv|fc|linear)(?P<index>\d*)$")


def _features(norm: nn.Module) -> int | None:
    return getattr(norm, "num_features", None) or getattr(norm, "num_channels", None)


def _outputs(layer: nn.Module) -> int | None:
    return getattr(layer, "out_channels", None) or getattr(layer, "out_features", None)


def _qualified(parent: str, child: str) -> str:
    """The child's qualified name, as :func:`~svd_callback.layers.find_layers` names layers
    (without ``torch.compile``'s ``_orig_mod``)."""
    return original_name(f"{parent}.{child}" if parent else child)


__all__ = [
    "output_normalizers",
]

def output_normalizers(model: nn.Module) -> dict[str, str]:
    """Map the qualified name of each conv/linear layer whose output feeds a normalisation
    layer (see the module docstring for the rules) to the qualified name of that normaliser.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.Conv2d(8, 8, 3), nn.ReLU())
        >>> output_normalizers(net)
        {'0': '1'}
    """
    found: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        if isinstance(parent, nn.Sequential):
            for (name, layer), (next_name, norm) in zip(children, children[1:], strict=False):
                if _match(layer, norm):
                    found[_qualified(parent_name, name)] = _qualified(parent_name, next_name)
        by_name = dict(children)
        for name, layer in children:
            match = _NAME.match(name)
            if match is None or not isinstance(layer, _LAYER_TYPES):
                continue
            for norm_word in ("bn", "norm"):
                norm_name = f"{match['prefix']}{norm_word}{match['index']}"
                norm = by_name.get(norm_name)
                if norm is not None and _match(layer, norm):
                    found.setdefault(_qualified(parent_name, name),
                                     _qualified(parent_name, norm_name))
    return found


def _match(layer: nn.Module, norm: nn.Module) -> bool:
    if not (isinstance(layer, _LAYER_TYPES) and isinstance(norm, NORMALIZER_TYPES)):
        return False
    outputs, features = _outputs(layer), _features(norm)
    return outputs is not None and outputs == features
