"""Load a model to analyse offline: a torchvision model name, a saved ``nn.Module``, a Lightning
checkpoint (with its LightningModule class, or weights only), or a plain state dict."""

from __future__ import annotations

import importlib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn


class ModelLoadError(ValueError):
    """The model or checkpoint could not be loaded; the message says why, in one line."""


def load_model(source: str, model_class: str | None = None, num_classes: int | None = None,
               map_location: str = "cpu") -> tuple[nn.Module, str | None]:
    """Return ``(model, note)``; ``note`` says what could not be recovered (or None).

    Args:
        source: a torchvision model name (``resnet18``), or a path to a ``.ckpt`` Lightning
            checkpoint, a saved ``nn.Module`` or a saved state dict.
        model_class: ``package.module:Class`` of the LightningModule (or ``nn.Module``) for a
            checkpoint; without it a checkpoint's weights are analysed as bare layers.
        num_classes: for torchvision models.
        map_location: device to load tensors on.
    """
    path = Path(source)
    if not path.exists():
        if "/" in source or source.endswith((".ckpt", ".pt", ".pth")):
            raise ModelLoadError(f"no such file: {source}")
        return _torchvision(source, num_classes), None
    if path.is_dir():
        raise ModelLoadError(f"{source} is a directory, not a model file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise ModelLoadError(f"cannot read {source}: {type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if isinstance(obj, nn.Module):
        return obj, None
    if isinstance(obj, dict) and "state_dict" in obj:
        if model_class is not None:
            cls = _import_class(model_class)
            try:
                module = cls(**obj.get("hyper_parameters", {}))
                module.load_state_dict(obj["state_dict"])
            except Exception as error:
                raise ModelLoadError(f"cannot build {model_class} from {source}: {error}") from None
            return module, None
        return weights_only_model(obj["state_dict"]), _WEIGHTS_ONLY_NOTE
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return weights_only_model(obj), _WEIGHTS_ONLY_NOTE
    raise ModelLoadError(f"{source} holds a {type(obj).__name__}, not a model, checkpoint or "
                         "state dict")


_WEIGHTS_ONLY_NOTE = ("weights only: layer geometry (groups, stride, dilation) is unknown, so "
                      "grouped convs are analysed as one matrix and operator mode is unavailable; "
                      "pass --model-class to rebuild the model")


def weights_only_model(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A module tree holding every >= 2-D ``*.weight`` tensor as a Linear or Conv layer."""
    root = nn.Module()
    builders = {2: nn.Linear, 3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for key, tensor in state_dict.items():
        if not key.endswith(".weight") or tensor.dim() not in builders:
            continue
        name = key[: -len(".weight")]
        if tensor.dim() == 2:
            layer = nn.Linear(tensor.shape[1], tensor.shape[0], bias=False, device="meta")
        else:
            layer = builders[tensor.dim()](tensor.shape[1], tensor.shape[0],
                                           tuple(tensor.shape[2:]), bias=False, device="meta")
        layer.weight = nn.Parameter(tensor.detach(), requires_grad=False)
        layers[name] = layer
    if not layers:
        raise ModelLoadError("the state dict holds no conv or linear weight")
    for name, layer in layers.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, layer)
    return root


def _torchvision(name: str, num_classes: int | None) -> nn.Module:
    from torchvision import models

    try:
        builder = models.get_model_builder(name)
    except ValueError:
        raise ModelLoadError(f"{name!r} is neither a file nor a torchvision model name") from None
    kwargs = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return builder(**kwargs)


def _import_class(path: str) -> type:
    module_name, _, attr = path.partition(":")
    if not attr:
        module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise ModelLoadError(f"cannot import model class {path!r}: {error}") from None
