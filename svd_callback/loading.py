"""Load a model to analyse offline: a torchvision model name, a saved ``nn.Module``, a Lightning
checkpoint (with its LightningModule class, or weights only), or a plain state dict.

Files are read with ``torch.load(weights_only=True)``: the unpickler builds tensors, containers
and plain values only, and the classes of ``torch.nn`` (a saved ``nn.Sequential`` of them), so a
file cannot run code while it is read. A file that needs any other class (a model saved whole
with its own class, a checkpoint whose hyper-parameters hold objects) is refused with a message
naming those classes; ``trust_pickle=True`` (``svd-callback analyze --unsafe-load``) unpickles it
in full, which runs whatever code the file holds.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class ModelLoadError(ValueError):
    """The model or checkpoint could not be loaded; the message says why, in one line."""


UNSAFE_LOAD_OPTION = "--unsafe-load"
"""The command-line option that unpickles a file in full (``trust_pickle=True``)."""


def load_model(source: str, model_class: str | None = None, num_classes: int | None = None,
               map_location: str = "cpu", trust_pickle: bool = False,
               ) -> tuple[nn.Module, str | None]:
    """Return ``(model, note)``; ``note`` says what could not be recovered (or None).

    Args:
        source: a torchvision model name (``resnet18``), or a path to a ``.ckpt`` Lightning
            checkpoint, a saved ``nn.Module`` or a saved state dict.
        model_class: ``package.module:Class`` of the LightningModule (or ``nn.Module``) for a
            checkpoint; without it a checkpoint's weights are analysed as bare layers.
        num_classes: for torchvision models.
        map_location: device to load tensors on.
        trust_pickle: unpickle the file in full (``torch.load(weights_only=False)``): this runs
            any code the file holds; only for files from a trusted source.
    """
    path = Path(source)
    if not path.exists():
        if "/" in source or source.endswith((".ckpt", ".pt", ".pth")):
            raise ModelLoadError(f"no such file: {source}")
        return _torchvision(source, num_classes), None
    if path.is_dir():
        raise ModelLoadError(f"{source} is a directory, not a model file")
    obj = load_file(path, map_location, trust_pickle)
    if isinstance(obj, nn.Module):
        return obj, None
    if isinstance(obj, dict) and "state_dict" in obj:
        if not isinstance(obj["state_dict"], Mapping):
            raise ModelLoadError(f"{source} holds a 'state_dict' that is a "
                                 f"{type(obj['state_dict']).__name__}, not a mapping of tensors")
        if model_class is not None:
            return _rebuild(source, obj, model_class), None
        return weights_only_model(obj["state_dict"]), _WEIGHTS_ONLY_NOTE
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return weights_only_model(obj), _WEIGHTS_ONLY_NOTE
    raise ModelLoadError(f"{source} holds a {type(obj).__name__}, not a model, checkpoint or "
                         "state dict")


def load_file(path: str | Path, map_location: str = "cpu", trust_pickle: bool = False) -> object:
    """The object saved in ``path``, read with ``torch.load(weights_only=True)`` and the
    :func:`safe_classes` allowed (a full unpickle with ``trust_pickle``).

    Raises:
        ModelLoadError: the file cannot be read, or needs classes the safe load refuses (the
            message names them and :data:`UNSAFE_LOAD_OPTION`, in one line).
    """
    try:
        if trust_pickle:
            return torch.load(path, map_location=map_location, weights_only=False)
        with _allowed(safe_classes()), warnings.catch_warnings():
            # a file pickled outside torch.save: its protocol is no reason to warn
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle and "weights only load failed" in str(error).lower():
            raise ModelLoadError(_refusal(path, error)) from None
        raise ModelLoadError(f"cannot read {path}: {type(error).__name__}: "
                             f"{_first_line(error)}") from None
    except Exception as error:
        raise ModelLoadError(f"cannot read {path}: {type(error).__name__}: "
                             f"{_first_line(error)}") from None


def safe_classes() -> list[type]:
    """The classes a safe load may build besides tensors and plain containers: every
    ``nn.Module`` class of ``torch.nn.modules`` (their state is data: tensors, numbers, strings
    and other such modules) and Lightning's ``AttributeDict`` (a ``dict`` of hyper-parameters)."""
    classes = [cls for _, cls in inspect.getmembers(nn.modules, inspect.isclass)
               if issubclass(cls, nn.Module) and cls.__module__.startswith("torch.nn.modules")]
    with contextlib.suppress(ImportError):
        from lightning.fabric.utilities.data import AttributeDict

        classes.append(AttributeDict)
    return classes


def _allowed(classes: list[type]) -> contextlib.AbstractContextManager:
    """``torch.serialization.safe_globals(classes)`` (torch >= 2.5), else the same classes added
    to the process-wide allow-list (torch 2.4)."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        return serialization.safe_globals(classes)
    serialization.add_safe_globals(classes)
    return contextlib.nullcontext()


def _refusal(path: str | Path, error: BaseException) -> str:
    """Why a safe load refused ``path``, and the option that would unpickle it in full: the
    classes it needs (read from the pickle without running it), or what the safe unpickler
    could not read (a damaged file, a pickle not written by ``torch.save``)."""
    text = str(error)
    if "Unsupported global" in text:
        names: list[str] = []
        find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
        if find is not None:
            with contextlib.suppress(Exception):
                allowed = {f"{c.__module__}.{c.__qualname__}" for c in safe_classes()}
                names = [name for name in find(path) if name not in allowed]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        what = (f"{path} needs classes that a safe load (torch.load weights_only=True) refuses"
                + (f" ({shown})" if shown else ""))
        instead = ", or save its state_dict instead"
    else:
        reason = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
        what = (f"cannot read {path} with a safe load (torch.load weights_only=True: "
                f"{reason[0] if reason else 'refused'}): the file is damaged or is a pickle not "
                f"written by torch.save")
        instead = ""
    return (f"{what}; loading it in full can run arbitrary code from the file: pass "
            f"{UNSAFE_LOAD_OPTION} only if you trust its source{instead}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


_WEIGHTS_ONLY_NOTE = ("weights only: layer geometry (groups, stride, dilation) is unknown, so "
                      "grouped convs are analysed as one matrix and operator mode is unavailable; "
                      "pass --model-class to rebuild the model")


def weights_only_model(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A module tree holding every >= 2-D ``*.weight`` tensor as a Linear or Conv layer."""
    root = nn.Module()
    builders = {2: nn.Linear, 3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for key, tensor in state_dict.items():
        if (not isinstance(key, str) or not key.endswith(".weight")
                or not isinstance(tensor, torch.Tensor) or tensor.dim() not in builders):
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


def _rebuild(source: str, checkpoint: dict, model_class: str) -> nn.Module:
    """``model_class(**hyper_parameters)`` with the checkpoint's weights loaded."""
    cls = _import_class(model_class)
    try:
        module = cls(**checkpoint.get("hyper_parameters", {}))
    except Exception as error:
        raise ModelLoadError(f"cannot build {model_class} from the hyper-parameters in {source}: "
                             f"{type(error).__name__}: {_one_line(error)}") from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{model_class} builds a {type(module).__name__}, not an nn.Module")
    mismatch = state_dict_mismatch(module.state_dict(), checkpoint["state_dict"])
    if mismatch:
        raise ModelLoadError(f"{source} does not fit {model_class}: {mismatch}")
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except Exception as error:
        raise ModelLoadError(f"cannot load {source} into {model_class}: "
                             f"{_one_line(error)}") from None
    return module


def state_dict_mismatch(expected: Mapping[str, object], found: Mapping[str, object],
                        shown: int = 2) -> str | None:
    """One line naming how ``found`` (a checkpoint) differs from ``expected`` (the model's own
    state dict): shapes that differ, keys the model lacks, keys the checkpoint lacks. None when
    they match."""
    shapes = [f"{key} {_shape(value)} in the checkpoint, {_shape(expected[key])} in the model"
              for key, value in found.items()
              if key in expected and _shape(value) != _shape(expected[key])]
    unexpected = [key for key in found if key not in expected]
    missing = [key for key in expected if key not in found]
    parts = []
    for items, what in ((shapes, "tensor(s) of another shape"),
                        (unexpected, "key(s) the model lacks"),
                        (missing, "key(s) the checkpoint lacks")):
        if items:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            parts.append(f"{len(items)} {what}: {', '.join(items[:shown])}{more}")
    return "; ".join(parts) or None


def _shape(value: object) -> list[int] | None:
    shape = getattr(value, "shape", None)
    return list(shape) if shape is not None else None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _torchvision(name: str, num_classes: int | None) -> nn.Module:
    from torchvision import models

    try:
        builder = models.get_model_builder(name)
    except ValueError:
        raise ModelLoadError(f"{name!r} is neither a file nor a torchvision model name") from None
    kwargs = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        return builder(**kwargs)
    except Exception as error:  # e.g. a head too large to allocate, an argument it refuses
        raise ModelLoadError(f"cannot build torchvision model {name!r} with {kwargs}: "
                             f"{type(error).__name__}: {_one_line(error)}") from None


def _import_class(path: str) -> type:
    module_name, _, attr = path.partition(":")
    if not attr:
        module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise ModelLoadError(f"cannot import model class {path!r}: {_one_line(error)}") from None
