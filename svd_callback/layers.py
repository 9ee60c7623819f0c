"""Find the analysable layers of a model, their geometry and their real input sizes.

Analysable: ``nn.Linear`` and ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` (grouped,
depthwise, dilated and strided included), and their lazy variants once materialised. Every other
module that owns a weight matrix (``nn.Embedding``, ``nn.Bilinear``, attention projections held as
raw parameters, ...) and every unmaterialised lazy module is reported as skipped with its reason,
never silently dropped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm as _HookSpectralNorm
from torch.nn.utils.weight_norm import WeightNorm as _HookWeightNorm

_CONV_KINDS: dict[type, str] = {
    nn.Conv1d: "conv1d",
    nn.Conv2d: "conv2d",
    nn.Conv3d: "conv3d",
    nn.ConvTranspose1d: "conv_transpose1d",
    nn.ConvTranspose2d: "conv_transpose2d",
    nn.ConvTranspose3d: "conv_transpose3d",
}


@dataclass
class LayerSpec:
    """An analysable layer.

    Attributes:
        name: qualified name from ``model.named_modules()``.
        module: the module itself (its weight is read, never written).
        kind: ``linear``, ``conv1d`` ... ``conv_transpose3d``.
        weight_shape: ``tuple(module.weight.shape)``.
        groups, stride, dilation, padding: conv geometry (1 / () for linear layers).
        transposed: True for ``ConvTranspose*``; the operator is then the adjoint of the conv with
            the same weight tensor, whose input is this layer's *output*.
        input_size: spatial size of the input seen by the layer (from a probe forward pass or the
            user), None until known. For transposed convs, the adjoint's input size (this layer's
            output size), which is what ``operator_svdvals`` needs.
    """

    name: str
    module: nn.Module
    kind: str
    weight_shape: tuple[int, ...]
    groups: int = 1
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    transposed: bool = False
    input_size: tuple[int, ...] | None = None

    @property
    def is_conv(self) -> bool:
        return self.kind != "linear"

    @property
    def spatial_dims(self) -> int:
        return len(self.weight_shape) - 2

    @property
    def weight(self) -> torch.Tensor:
        return read_weight(self.module)


def read_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` as the module's next forward would use it, read without side effects.

    A parametrized weight (``torch.nn.utils.parametrizations.spectral_norm``, ``weight_norm``,
    ``orthogonal``...) is computed with its parametrizations in eval mode: in train mode
    ``spectral_norm`` runs a power iteration that updates its ``_u``/``_v`` buffers, so reading
    ``.weight`` would change the training. A weight kept by the old forward pre-hooks
    (``torch.nn.utils.spectral_norm`` / ``weight_norm``) is recomputed from its parameters
    without a power iteration, since ``module.weight`` holds the value of the last forward.
    """
    if parametrize.is_parametrized(module, "weight"):
        chain = module.parametrizations["weight"]
        modes = {sub: sub.training for sub in chain.modules()}
        try:
            chain.eval()
            return module.weight
        finally:
            for sub, training in modes.items():
                sub.training = training
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _HookSpectralNorm) and hook.name == "weight":
            return hook.compute_weight(module, do_power_iteration=False)
        if isinstance(hook, _HookWeightNorm) and hook.name == "weight":
            return hook.compute_weight(module)
    return module.weight


def has_weight(module: nn.Module) -> bool:
    """Whether ``module`` has a ``weight`` tensor, without computing a parametrized one."""
    return parametrize.is_parametrized(module, "weight") or isinstance(
        getattr(module, "weight", None), torch.Tensor)


def _parametrization_modules(model: nn.Module) -> set[nn.Module]:
    """The modules inside parametrization chains (``ParametrizationList`` and what it holds):
    part of their layer, not layers of their own."""
    inner: set[nn.Module] = set()
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList):
            inner.update(module.modules())
    return inner


@dataclass(frozen=True)
class SkippedModule:
    """A module that owns a weight matrix but cannot be analysed, and why."""

    name: str
    kind: str
    reason: str


def matches(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """Glob filter on qualified names (``fnmatch``: ``features.*``, ``*.conv2``, ``fc``)."""
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def layer_kind(module: nn.Module) -> str | None:
    """``linear`` / ``conv2d`` / ... for analysable module types, None otherwise."""
    if isinstance(module, nn.Linear):
        return "linear"
    for cls, kind in _CONV_KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


def find_layers(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> tuple[list[LayerSpec], list[SkippedModule]]:
    """Every analysable layer of ``model`` (in ``named_modules`` order) and the skipped ones.

    ``include`` / ``exclude`` are glob patterns on qualified names; a module filtered out by them is
    neither analysed nor reported.
    """
    include_p, exclude_p = _as_patterns(include), _as_patterns(exclude)
    specs: list[LayerSpec] = []
    skipped: list[SkippedModule] = []
    inner = _parametrization_modules(model)
    for name, module in model.named_modules():
        name = name or type(module).__name__.lower()  # a bare layer passed as the model
        if module in inner:
            continue
        if not matches(name, include_p, exclude_p):
            continue
        kind = layer_kind(module)
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            skipped.append(
                SkippedModule(
                    name,
                    type(module).__name__,
                    "lazy module not materialised yet (run one forward pass first)",
                )
            )
            continue
        if kind is None:
            reason = _unsupported_reason(module)
            if reason is not None:
                skipped.append(SkippedModule(name, type(module).__name__, reason))
            continue
        if not has_weight(module):
            skipped.append(SkippedModule(name, kind, "module has no weight tensor"))
            continue
        specs.append(_spec(name, module, kind))
    return specs, skipped


def _spec(name: str, module: nn.Module, kind: str) -> LayerSpec:
    shape = tuple(read_weight(module).shape)
    if kind == "linear":
        return LayerSpec(name, module, kind, shape)
    return LayerSpec(
        name,
        module,
        kind,
        shape,
        groups=int(module.groups),
        stride=tuple(module.stride),
        dilation=tuple(module.dilation),
        padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
        transposed=kind.startswith("conv_transpose"),
    )


def _unsupported_reason(module: nn.Module) -> str | None:
    """A reason for modules holding a weight *matrix* we do not analyse; None for the rest."""
    own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.dim() >= 2]
    if not own:
        return None
    names = ", ".join(n for n, _ in own)
    return f"{type(module).__name__} is not a conv or linear layer (parameters: {names})"


@contextlib.contextmanager
def frozen_forward(model: nn.Module) -> Iterator[None]:
    """Eval mode for every module, a forked RNG and ``torch.no_grad()`` for the body; each
    module's own ``training`` flag is restored afterwards (also on error).

    In train mode a forward pass would update batch-norm running statistics and draw dropout
    masks from the global generator, so a monitored run would no longer end with the weights it
    has without the monitor.
    """
    modes = {module: module.training for module in model.modules()}
    device = next((p.device for p in model.parameters()), None)
    cuda = []
    if device is not None and device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        model.eval()
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training


def record_input_sizes(
    model: nn.Module,
    example_input: object,
    specs: Iterable[LayerSpec] | None = None,
    forward: Callable[[nn.Module, object], object] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Spatial input size of every conv layer, from one forward pass of ``example_input``.

    The pass runs under :func:`frozen_forward`, so the model is left exactly as it was. Hooks are
    removed even on error. For a
    transposed conv the size recorded is its *output* size (the adjoint conv's input).
    ``forward(model, example_input)`` runs the model (None: ``model(example_input)``, a dict
    as keyword arguments, a tuple or list as positional ones).
    """
    specs = list(specs) if specs is not None else find_layers(model)[0]
    convs = {spec.module: spec for spec in specs if spec.is_conv}
    sizes: dict[str, tuple[int, ...]] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        spec = convs[module]
        tensor = output if spec.transposed else inputs[0]
        sizes[spec.name] = tuple(int(s) for s in tensor.shape[-spec.spatial_dims :])

    handles = [module.register_forward_hook(hook) for module in convs]
    device = next((p.device for p in model.parameters()), None)
    try:
        with frozen_forward(model):
            (forward or _forward)(model, _to_device(example_input, device))
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def example_input_for(model: nn.Module, input_size: int | Sequence[int]) -> torch.Tensor:
    """A zero batch of one image of spatial ``input_size`` for the model's first layer.

    The channel count is read from the first conv (or linear) layer found.
    """
    specs, _ = find_layers(model)
    if not specs:
        raise ValueError("the model has no conv or linear layer to infer an input from")
    first = specs[0]
    size = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    if first.kind == "linear":
        return first.weight.new_zeros(1, first.weight_shape[1])
    channels = first.weight_shape[0] if first.transposed else first.weight_shape[1] * first.groups
    if len(size) == 1 and first.spatial_dims > 1:
        size = size * first.spatial_dims
    return first.weight.new_zeros(1, channels, *size)


def estimate_cost(spec: LayerSpec, mode: str) -> float:
    """Relative cost (flops of the dense SVDs) of decomposing ``spec`` in ``mode``.

    Used to balance layers across ranks; only ratios matter.
    """
    d, c, *kernel = spec.weight_shape  # a transposed conv's weight is its adjoint's weight
    k = math.prod(kernel) if kernel else 1
    g = spec.groups
    if spec.kind == "linear" or mode == "unfold":
        m, n = d // g if spec.is_conv else d, (c * k) if spec.is_conv else c
        return float(g * m * n * min(m, n))
    if mode == "slices":
        return float(k * d * c * min(d, c))
    if mode == "operator":
        size = spec.input_size or tuple([8] * len(kernel))
        stride = spec.stride or (1,) * len(kernel)
        freqs = math.prod(max(1, n // s) for n, s in zip(size, stride, strict=False))
        cols = c * math.prod(stride)
        rows = d // g
        return float(freqs * g * rows * cols * min(rows, cols))
    raise ValueError(f"unknown conv mode {mode!r}")


def _forward(model: nn.Module, example_input: object) -> None:
    if isinstance(example_input, dict):
        model(**example_input)
    elif isinstance(example_input, (tuple, list)):
        model(*example_input)
    else:
        model(example_input)


def _to_device(value: object, device: torch.device | None) -> object:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value
