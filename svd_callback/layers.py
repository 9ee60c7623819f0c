"""Find the analysable layers of a model, their geometry and their real input sizes.

Analysable:

- ``nn.Linear`` and ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` (grouped, depthwise,
  dilated and strided included), and their lazy variants once materialised;
- ``nn.MultiheadAttention``: its query, key and value maps, records ``<module>.q``, ``.k``, ``.v``
  (the three row blocks of ``in_proj_weight``, or ``q_proj_weight`` / ``k_proj_weight`` /
  ``v_proj_weight`` when the key and value dimensions differ); its ``out_proj`` is an
  ``nn.Linear`` and found as ``<module>.out_proj``;
- a packed ``nn.Linear`` named ``qkv`` with ``out = 3 * in`` (Swin, timm's ViTs): records
  ``<module>.q``, ``.k``, ``.v``, its three row blocks;
- Hugging Face ``transformers``' ``Conv1D`` (GPT-2 and relatives) as the linear map it is: its
  weight is stored transposed, ``(in, out)``, and is read as ``weight.T``. A packed ``c_attn``
  (``out = 3 * in``, ``query, key, value = c_attn(x).split(in, dim=-1)``) gives the records
  ``<module>.q``, ``.k``, ``.v``. Detected by type when ``transformers`` is loaded (a model built
  with it has loaded it), so there is no dependency on the package;
- recurrent layers, ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` (every layer and direction) and
  ``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``: each ``weight_ih`` / ``weight_hh`` matrix as
  its gates' row blocks, records ``<module>.<param>.<gate>`` with the gates ``i f g o`` (LSTM)
  or ``r z n`` (GRU) in torch's stacking order, the whole matrix ``<module>.<param>`` for a
  plain RNN and for an LSTM's projection ``weight_hr_l{k}`` (kind ``linear``);
- ``nn.Embedding`` / ``nn.EmbeddingBag`` (kind ``embedding``, the ``(num_embeddings, dim)``
  table as a matrix) only with ``embeddings=True``.

A weight shared by several modules (tied input and output embeddings) is analysed once, under
the first name in ``named_modules`` order; the others are reported as skipped, naming it. Every
other module that owns a weight matrix and every unmaterialised lazy module is reported as
skipped with its reason, never silently dropped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm as _HookSpectralNorm
from torch.nn.utils.weight_norm import WeightNorm as _HookWeightNorm

from svd_callback.sharding import full_weight, gathered_copy
from svd_callback.spectra.modes import mode_for

__all__ = [
    "COMPILED_MODULE_ATTRIBUTE",
    "EMBEDDING_TYPES",
    "GATE_NAMES",
    "MATRIX_KINDS",
    "QKV",
    "LayerSpec",
    "MatrixView",
    "SkippedModule",
    "estimate_cost",
    "example_input_for",
    "find_layers",
    "frozen_forward",
    "has_weight",
    "is_conv_kind",
    "is_hf_conv1d",
    "layer_kind",
    "matches",
    "named_modules",
    "original_name",
    "read_weight",
    "record_input_sizes",
    "recurrent_gates",
    "recurrent_params",
]

_CONV_KINDS: dict[type, str] = {
    nn.Conv1d: "conv1d",
    nn.Conv2d: "conv2d",
    nn.Conv3d: "conv3d",
    nn.ConvTranspose1d: "conv_transpose1d",
    nn.ConvTranspose2d: "conv_transpose2d",
    nn.ConvTranspose3d: "conv_transpose3d",
}


EMBEDDING_TYPES: tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag)
MATRIX_KINDS = ("linear", "embedding")
QKV = ("q", "k", "v")

RECURRENT_GATES: dict[str, tuple[str, ...]] = {
    "LSTM": ("i", "f", "g", "o"),
    "GRU": ("r", "z", "n"),
    "RNN_TANH": (),
    "RNN_RELU": (),
}
"""The gates stacked along the rows of a recurrent ``weight_ih`` / ``weight_hh``, by the
module's ``mode``, in torch's order (``nn.LSTM``: ``W_ii|W_if|W_ig|W_io``; ``nn.GRU``:
``W_ir|W_iz|W_in``); a plain RNN has one block, analysed whole."""

GATE_NAMES = {"i": "input gate i", "f": "forget gate f", "g": "cell candidate g",
              "o": "output gate o", "r": "reset gate r", "z": "update gate z",
              "n": "new gate n"}
"""What each gate record is (its record's ``matrix`` note)."""


@dataclass(frozen=True)
class MatrixView:
    """Where a layer's ``(out, in)`` matrix lives among its module's parameters.

    Attributes:
        param: the parameter's attribute name on the module.
        transpose: the parameter is stored ``(in, out)`` (``transformers``' ``Conv1D``).
        rows: ``(start, stop)``: the block of output rows of a packed projection, or None.
        label: what the block is (``input gate i``), for the record's note; not part of the
            view's identity.
    """

    param: str = "weight"
    transpose: bool = False
    rows: tuple[int, int] | None = None
    label: str = field(default="", compare=False)

    def describe(self) -> str:
        """``in_proj_weight[0:64]``, ``weight.T[128:192]``, ``weight.T``,
        ``weight_ih_l0[0:32] (input gate i)`` (the record's note)."""
        text = self.param + (".T" if self.transpose else "")
        text += f"[{self.rows[0]}:{self.rows[1]}]" if self.rows is not None else ""
        return text + (f" ({self.label})" if self.label else "")

    def stored(self, module: nn.Module) -> torch.Tensor:
        """The parameter as stored (a ``DTensor`` shard on a sharded model, never gathered)."""
        return read_weight(module, self.param)

    def shape(self, module: nn.Module) -> tuple[int, ...]:
        """The analysed matrix's shape, read without gathering a sharded weight."""
        shape = tuple(self.stored(module).shape)  # a DTensor's shape is the global one
        if self.transpose:
            shape = shape[::-1]
        if self.rows is not None:
            shape = (self.rows[1] - self.rows[0], *shape[1:])
        return shape

    def __call__(self, module: nn.Module) -> torch.Tensor:
        weight = gathered_copy(module, self.param)  # gathered for this rank beforehand
        if weight is None:
            weight = full_weight(self.stored(module))  # a sharded (FSDP2) weight: gathered whole
        if self.transpose:
            weight = weight.t()
        if self.rows is not None:
            weight = weight[self.rows[0] : self.rows[1]]
        return weight


@dataclass
class LayerSpec:
    """An analysable layer.

    Attributes:
        name: the record's name: the qualified name from ``model.named_modules()``, plus
            ``.q`` / ``.k`` / ``.v`` for a block of a packed attention projection, or
            ``.<param>[.<gate>]`` for a recurrent layer's matrix (``lstm.weight_ih_l0.f``).
        module: the module itself (its weight is read, never written).
        kind: ``linear``, ``embedding``, ``conv1d`` ... ``conv_transpose3d``.
        weight_shape: shape of the analysed weight, ``tuple(spec.weight.shape)``; ``(out, in)``
            for every matrix (a ``Conv1D``'s transposed, a packed projection's block).
        groups, stride, dilation, padding: conv geometry (1 / () for linear layers).
        transposed: True for ``ConvTranspose*``; the operator is then the adjoint of the conv with
            the same weight tensor, whose input is this layer's *output*.
        input_size: spatial size of the input seen by the layer (from a probe forward pass or the
            user), None until known. For transposed convs, the adjoint's input size (this layer's
            output size), which is what ``operator_svdvals`` needs.
        matrix: where the weight is read from (``module.weight`` itself by default).
        module_name: the module's qualified name (``name`` without its block's suffix).
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
    matrix: MatrixView = MatrixView()
    module_name: str = ""

    def __post_init__(self) -> None:
        self.module_name = self.module_name or self.name

    @property
    def is_conv(self) -> bool:
        return is_conv_kind(self.kind)

    @property
    def is_module_weight(self) -> bool:
        """The record is a whole ``nn.Linear`` / conv module with its ``weight`` as is (what the
        class analysis hooks and reads)."""
        return self.matrix == MatrixView() and self.kind != "embedding"

    @property
    def spatial_dims(self) -> int:
        return len(self.weight_shape) - 2

    @property
    def is_meta(self) -> bool:
        """The weight has no data (a meta tensor); read without gathering a sharded weight."""
        return bool(self.matrix.stored(self.module).is_meta)

    @property
    def weight(self) -> torch.Tensor:
        """The analysed weight: a view of the module's parameter (computed without side effects
        when the weight is parametrized, see :func:`read_weight`)."""
        return self.matrix(self.module)


def read_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``module.<name>`` (``weight`` by default) as the module's next forward would use it, read
    without side effects.

    A parametrized weight (``torch.nn.utils.parametrizations.spectral_norm``, ``weight_norm``,
    ``orthogonal``...) is computed with its parametrizations in eval mode: in train mode
    ``spectral_norm`` runs a power iteration that updates its ``_u``/``_v`` buffers, so reading
    ``.weight`` would change the training. A weight that a forward pre-hook computes holds the
    value of the last forward in ``module.<name>``, one optimizer step late, so it is computed
    as the hook would: ``torch.nn.utils.spectral_norm`` / ``weight_norm`` from their parameters
    (without a power iteration), ``torch.nn.utils.prune`` as ``<name>_orig * <name>_mask``
    (``BasePruningMethod.apply_mask``).
    """
    if parametrize.is_parametrized(module, name):
        chain = module.parametrizations[name]
        modes = {sub: sub.training for sub in chain.modules()}
        try:
            chain.eval()
            return getattr(module, name)
        finally:
            for sub, training in modes.items():
                sub.training = training
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _HookSpectralNorm) and hook.name == name:
            return hook.compute_weight(module, do_power_iteration=False)
        if isinstance(hook, _HookWeightNorm) and hook.name == name:
            return hook.compute_weight(module)
        if isinstance(hook, BasePruningMethod) and hook._tensor_name == name:
            return hook.apply_mask(module)
    return getattr(module, name)


COMPILED_MODULE_ATTRIBUTE = "_orig_mod"
"""Where ``torch.compile``'s ``OptimizedModule`` holds the module it compiled."""


def original_name(qualified: str) -> str:
    """``qualified`` without the ``_orig_mod`` parts that ``torch.compile`` adds:
    ``net._orig_mod.0`` -> ``net.0``, so a compiled model's layers carry the names (and tags) of
    the same model uncompiled."""
    if COMPILED_MODULE_ATTRIBUTE not in qualified:
        return qualified
    return ".".join(p for p in qualified.split(".") if p != COMPILED_MODULE_ATTRIBUTE)


def named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` under their :func:`original_name`, without ``torch.compile``'s
    wrappers (the module a wrapper holds follows it under the same name)."""
    for qualified, module in model.named_modules():
        if not _is_compiled_wrapper(module):
            yield original_name(qualified), module


def _is_compiled_wrapper(module: nn.Module) -> bool:
    """``module`` is a ``torch.compile`` ``OptimizedModule`` (tested without importing
    ``torch._dynamo``)."""
    return type(module).__name__ == "OptimizedModule" and isinstance(
        getattr(module, COMPILED_MODULE_ATTRIBUTE, None), nn.Module)


def has_weight(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module`` has a ``<name>`` tensor (``weight`` by default), without computing a
    parametrized one."""
    return parametrize.is_parametrized(module, name) or isinstance(
        getattr(module, name, None), torch.Tensor)


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
    """A module that owns a weight matrix but cannot be analysed, and why (``code``: one of
    :data:`svd_callback.report.REASON_CODES`)."""

    name: str
    kind: str
    reason: str
    code: str = "unsupported_module"


def matches(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """Glob filter on qualified names (``fnmatch``: ``features.*``, ``*.conv2``, ``fc``)."""
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def is_conv_kind(kind: str) -> bool:
    """A convolution's kind (``conv1d`` ... ``conv_transpose3d``): its matrices depend on the
    conv mode, every other kind's do not."""
    return kind.startswith("conv")


def layer_kind(module: nn.Module) -> str | None:
    """``linear`` / ``conv2d`` / ... for analysable module types, None otherwise.

    ``transformers``' ``Conv1D``, ``nn.MultiheadAttention`` and the recurrent layers
    (:func:`recurrent_gates`) are ``linear``; embeddings (analysed on request only) are
    ``embedding``.
    """
    if (isinstance(module, (nn.Linear, nn.MultiheadAttention)) or is_hf_conv1d(module)
            or recurrent_gates(module) is not None):
        return "linear"
    if isinstance(module, EMBEDDING_TYPES):
        return "embedding"
    for cls, kind in _CONV_KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


def recurrent_gates(module: nn.Module) -> tuple[str, ...] | None:
    """The gates stacked in ``module``'s ``weight_ih`` / ``weight_hh`` (:data:`RECURRENT_GATES`;
    ``()`` for a plain RNN), or None when ``module`` is no ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``
    or one of their cells."""
    if isinstance(module, nn.RNNBase):
        return RECURRENT_GATES.get(module.mode)
    for cell, mode in ((nn.LSTMCell, "LSTM"), (nn.GRUCell, "GRU"), (nn.RNNCell, "RNN_TANH")):
        if isinstance(module, cell):
            return RECURRENT_GATES[mode]
    return None


def recurrent_params(module: nn.Module) -> list[str]:
    """The weight matrices of a recurrent module, in ``named_parameters`` order: ``weight_ih``,
    ``weight_hh`` of a cell; ``weight_ih_l{k}``, ``weight_hh_l{k}`` (and ``weight_hr_l{k}`` with
    ``proj_size > 0``), then the same with ``_reverse`` when bidirectional, layer by layer."""
    if not isinstance(module, nn.RNNBase):
        return ["weight_ih", "weight_hh"]
    suffixes = ("", "_reverse") if module.bidirectional else ("",)
    kinds = ("ih", "hh", "hr") if module.proj_size > 0 else ("ih", "hh")
    return [f"weight_{kind}_l{layer}{suffix}" for layer in range(module.num_layers)
            for suffix in suffixes for kind in kinds]


def is_hf_conv1d(module: nn.Module) -> bool:
    """``module`` is a ``transformers.pytorch_utils.Conv1D`` (a linear map with its weight stored
    ``(in, out)``). ``transformers`` is not imported here: a model holding one has loaded it."""
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    return isinstance(conv1d, type) and isinstance(module, conv1d)


def find_layers(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    embeddings: bool = False,
) -> tuple[list[LayerSpec], list[SkippedModule]]:
    """Every analysable layer of ``model`` (in ``named_modules`` order) and the skipped ones.

    ``include`` / ``exclude`` are glob patterns on record names (a packed attention projection's
    blocks are ``<module>.q`` ..., a recurrent layer's ``<module>.<param>.<gate>``; the names
    above a block, ``<module>.<param>`` and ``<module>``, match them too); a layer filtered out
    by them is neither analysed nor reported. ``embeddings``: analyse ``nn.Embedding`` tables
    (otherwise they are reported as skipped).
    """
    include_p, exclude_p = _as_patterns(include), _as_patterns(exclude)
    specs: list[LayerSpec] = []
    skipped: list[SkippedModule] = []
    inner = _parametrization_modules(model)
    owners: dict[tuple, str] = {}  # (parameter, view) -> the record that analyses it
    for qualified, module in named_modules(model):
        name = qualified or type(module).__name__.lower()  # a bare layer passed as the model
        if module in inner:
            continue
        kind = layer_kind(module)
        if kind is not None and not isinstance(module, LazyModuleMixin):
            parts = _split(qualified, name, module, kind)
            if parts:  # a packed projection, a recurrent layer: filtered block by block
                for spec in parts:
                    if _block_selected(spec.name, name, include_p, exclude_p):
                        _add(spec, specs, skipped, owners)
                continue
        if not matches(name, include_p, exclude_p):
            continue
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            skipped.append(
                SkippedModule(
                    name,
                    type(module).__name__,
                    "lazy module not materialised yet (run one forward pass first)",
                    "lazy_module",
                )
            )
            continue
        if kind is None:
            reason = _unsupported_reason(module)
            if reason is not None:
                skipped.append(SkippedModule(name, type(module).__name__, reason))
            continue
        if kind == "embedding" and not embeddings:
            skipped.append(SkippedModule(name, type(module).__name__, (
                f"{type(module).__name__} not analysed: embeddings are off (embeddings=True "
                f"analyses them)"), "embeddings_off"))
            continue
        if not has_weight(module):
            skipped.append(SkippedModule(name, kind, "module has no weight tensor"))
            continue
        weight = read_weight(module)
        if kind in MATRIX_KINDS and weight.dim() != 2:
            skipped.append(SkippedModule(name, kind, f"weight of shape {tuple(weight.shape)} is "
                                                     "not a matrix"))
            continue
        _add(_spec(name, module, kind), specs, skipped, owners)
    return specs, skipped


def _block_selected(
    name: str, module_name: str, include: list[str] | None, exclude: list[str] | None
) -> bool:
    """A block of a packed projection or recurrent layer is kept when one of the names above it
    (its own, ``<module>.<param>`` for a gate, its module's) is included and none is
    excluded."""
    scopes = [name, module_name]
    while "." in name and len(name) > len(module_name):
        name = name.rpartition(".")[0]
        scopes.append(name)
    included = not include or any(matches(s, include, None) for s in scopes)
    return included and all(matches(s, None, exclude) for s in scopes)


def _add(
    spec: LayerSpec, specs: list[LayerSpec], skipped: list[SkippedModule], owners: dict[tuple, str]
) -> None:
    """Append ``spec``, or report it as skipped when an earlier record reads the same weight."""
    name = spec.matrix.param
    # a parametrized weight is identified by its parametrization chain: reading it would compute
    # it (in train mode a spectral_norm power iteration)
    param = (spec.module.parametrizations[name] if parametrize.is_parametrized(spec.module, name)
             else getattr(spec.module, name))
    key = (id(param), spec.matrix.transpose, spec.matrix.rows)
    owner = owners.setdefault(key, spec.name)
    if owner == spec.name:
        specs.append(spec)
    else:
        skipped.append(SkippedModule(spec.name, spec.kind, (
            f"weight shared with {owner} (tied), analysed there"), "tied_weight"))


def _split(qualified: str, name: str, module: nn.Module, kind: str) -> list[LayerSpec]:
    """The records of a packed attention projection (:func:`_qkv_views`) or of a recurrent
    layer (:func:`_recurrent_views`), ``[]`` for other layers. Records are named
    ``<qualified>.<part>``, or ``<part>`` for the model itself, like its children."""
    views = _recurrent_views(module) if recurrent_gates(module) is not None else (
        _qkv_views(name, module))
    return [LayerSpec(f"{qualified}.{part}" if qualified else part, module, kind,
                      view.shape(module), matrix=view, module_name=name)
            for part, view in views]


def _recurrent_views(module: nn.Module) -> list[tuple[str, MatrixView]]:
    """``(<param>.<gate>, rows [j H, (j + 1) H) of <param>)`` for every gate j of every
    ``weight_ih`` / ``weight_hh`` matrix (H = ``hidden_size``: the layout of
    ``torch._VF.lstm`` / ``gru`` and of ``nn.LSTMCell``'s ``gates.chunk(4, 1)``), and
    ``(<param>, the whole matrix)`` for a plain RNN's and for ``weight_hr_l{k}`` (an LSTM's
    projection, ``h_t = W_hr (o_t * tanh(c_t))``). A matrix whose rows are not the gates times
    ``hidden_size`` is analysed whole."""
    gates = recurrent_gates(module) or ()
    hidden = int(module.hidden_size)
    views: list[tuple[str, MatrixView]] = []
    for param in recurrent_params(module):
        if not has_weight(module, param) or read_weight(module, param).dim() != 2:
            continue
        rows = read_weight(module, param).shape[0]
        if gates and not param.startswith("weight_hr") and rows == len(gates) * hidden:
            views.extend((f"{param}.{gate}", MatrixView(param, rows=(j * hidden, (j + 1) * hidden),
                                                        label=GATE_NAMES[gate]))
                         for j, gate in enumerate(gates))
        else:
            label = "projection" if param.startswith("weight_hr") else ""
            views.append((param, MatrixView(param, label=label)))
    return views


def _qkv_views(name: str, module: nn.Module) -> list[tuple[str, MatrixView]]:
    """The query, key and value blocks of a packed attention projection ([] for other layers).

    ``nn.MultiheadAttention``: rows ``[0, E)``, ``[E, 2E)``, ``[2E, 3E)`` of ``in_proj_weight``
    (``F.multi_head_attention_forward`` / ``_in_projection_packed``), or the separate
    ``q/k/v_proj_weight``. An ``nn.Linear`` named ``qkv`` with ``out = 3 * in`` (torchvision's
    Swin ``ShiftedWindowAttention``, timm's ``Attention``: ``qkv(x).reshape(..., 3, heads,
    head_dim)``): rows ``[0, E)``, ``[E, 2E)``, ``[2E, 3E)`` of its weight. A ``Conv1D`` named
    ``c_attn`` with ``nf = 3 * nx``: the three column
    blocks of its ``(nx, 3 nx)`` weight, GPT-2's ``c_attn(x).split(nx, dim=2)``; with
    ``nf = 2 * nx`` (GPT-2's cross-attention, whose query is ``q_attn``) the key and value.
    """
    if isinstance(module, nn.MultiheadAttention):
        if getattr(module, "_qkv_same_embed_dim", True):
            weight = module.in_proj_weight
            if weight is None or weight.dim() != 2 or weight.shape[0] % 3:
                return []
            e = weight.shape[0] // 3
            views = [MatrixView("in_proj_weight", rows=(i * e, (i + 1) * e)) for i in range(3)]
        else:
            views = [MatrixView(f"{p}_proj_weight") for p in QKV]
    elif (type(module) is nn.Linear and name.rsplit(".", 1)[-1] == "qkv"
          and module.out_features == 3 * module.in_features):
        e = module.in_features
        views = [MatrixView(rows=(i * e, (i + 1) * e)) for i in range(3)]
    elif is_hf_conv1d(module) and name.rsplit(".", 1)[-1] == "c_attn":
        nx, nf = tuple(module.weight.shape)
        if nf not in (2 * nx, 3 * nx):
            return []
        views = [MatrixView(transpose=True, rows=(i * nx, (i + 1) * nx)) for i in range(nf // nx)]
    else:
        return []
    return list(zip(QKV[-len(views) :], views, strict=True))


def _spec(name: str, module: nn.Module, kind: str) -> LayerSpec:
    if kind in MATRIX_KINDS:
        view = MatrixView(transpose=is_hf_conv1d(module))
        return LayerSpec(name, module, kind, view.shape(module), matrix=view)
    shape = tuple(read_weight(module).shape)
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
    """Eval mode for every module, a forked RNG and ``torch.no_grad()`` for the body; afterwards
    (also on error) each module's own ``training`` flag and every buffer of the model are
    restored.

    In train mode a forward pass would update batch-norm running statistics and draw dropout
    masks from the global generator, so a monitored run would no longer end with the weights it
    has without the monitor. Eval mode does not stop every forward from changing state: the
    observers and fake-quantize modules of quantization-aware training update their min/max,
    scale and zero point in any mode, and a custom module may update a buffer too. So every
    buffer is snapshot before the body and written back in place afterwards
    (:func:`_restore_buffers`: its object, shape and values), whatever module owns it.
    """
    modes = {module: module.training for module in model.modules()}
    buffers = _snapshot_buffers(model)
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
        _restore_buffers(buffers)


def _snapshot_buffers(model: nn.Module) -> list[tuple[nn.Module, dict, dict[int, torch.Tensor]]]:
    """Each module with its buffer dict as it is (name -> tensor object) and a copy of every
    buffer's values (by tensor id: a buffer shared by modules is copied once)."""
    copies: dict[int, torch.Tensor] = {}
    snapshot = []
    with torch.no_grad():
        for module in model.modules():
            own = dict(module._buffers)
            for tensor in own.values():
                if tensor is not None and id(tensor) not in copies:
                    copies[id(tensor)] = tensor.detach().clone()
            snapshot.append((module, own, copies))
    return snapshot


def _restore_buffers(snapshot: list[tuple[nn.Module, dict, dict[int, torch.Tensor]]]) -> None:
    """Put each module's buffers back as :func:`_snapshot_buffers` saw them: buffers added since
    removed, replaced ones put back, and every buffer's values (and shape, which observers
    resize) copied back in place, so that references held elsewhere (an optimizer, a hook)
    see them too."""
    with torch.no_grad():
        for module, own, copies in snapshot:
            for name in [n for n in module._buffers if n not in own]:
                del module._buffers[name]
                module._non_persistent_buffers_set.discard(name)
            for name, tensor in own.items():
                module._buffers[name] = tensor
                if tensor is None:
                    continue
                saved = copies[id(tensor)]
                try:
                    if tensor.shape != saved.shape:
                        tensor.resize_(saved.shape)
                    tensor.copy_(saved)
                except RuntimeError:  # a tensor that cannot be resized: the copy takes its place
                    module._buffers[name] = saved


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
    """Relative cost (flops of the dense SVDs) of decomposing ``spec`` in ``mode``
    (:meth:`svd_callback.spectra.modes.ModeSpec.cost`).

    Used to balance layers across ranks; only ratios matter.

    Raises:
        ValueError: an unknown mode.
    """
    return mode_for(mode, spec.is_conv).cost(spec)


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
