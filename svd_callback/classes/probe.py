"""A fixed, class-stratified probe set, the reading of batches, and one-pass activation capture.

The class analyses (docs/methods.md#class-statistics) compare statistics across epochs, so they must
see the *same* images every time: :func:`select_probe` picks them once, deterministically, from the
labels alone, with a private ``torch.Generator`` (the global RNG is never drawn from).
:func:`capture_activations` then records what chosen layers see and produce on those images, in a
single forward pass.

:func:`read_batch` is the one reader of a training or validation batch: it finds the inputs (and
the targets) of a tuple, list or dict batch. The class probe reads its batches with it
(:func:`split_batch`, which also checks that the targets are class labels), and so can any other
reader of model inputs (the input-size probe of ``operator`` mode).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from svd_callback.layers import named_modules


def select_probe(labels: torch.Tensor, size: int = 256, seed: int = 0) -> torch.Tensor:
    """Indices of a class-stratified probe of ``size`` examples (int64, on the CPU).

    Every class present in ``labels`` gets as equal a share as possible; a class with fewer
    examples than its share contributes all of them and the rest is spread over the other classes
    (water-filling). Within a class the examples are a uniform random choice from a private
    ``torch.Generator(seed)``; the global RNG state is left untouched.

    The result is ordered round-robin over the classes (one example of every class, in increasing
    label order, then a second one, ...), so every prefix of the probe is itself as balanced as
    possible; where the classes cannot be split exactly, the lower labels get the extra example.
    A label absent from ``labels`` simply gets no example (its class statistics are NaN later on).

    Args:
        labels: 1-D integer class labels of the candidate pool (any device).
        size: number of examples wanted; the whole pool is returned if it is smaller.
        seed: seed of the private generator.

    Raises:
        ValueError: ``labels`` not 1-D or ``size`` negative.
    """
    if size < 0:
        raise ValueError(f"probe size must be >= 0, got {size}")
    labels = torch.as_tensor(labels).detach().to("cpu")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    n = labels.numel()
    if n == 0 or size == 0:
        return torch.empty(0, dtype=torch.int64)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shuffle = torch.randperm(n, generator=generator)
    # Stable sort of the shuffled labels: classes in increasing order, random order inside each.
    _, class_of_shuffled = torch.unique(labels[shuffle], return_inverse=True)
    by_class = torch.sort(class_of_shuffled, stable=True).indices
    order = shuffle[by_class]
    class_index = class_of_shuffled[by_class]
    counts = torch.bincount(class_index)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(n) - starts[class_index]
    # Round-robin key: all rank-0 examples (by class), then all rank-1 examples, ...
    key = rank_in_class * counts.numel() + class_index
    return order[torch.argsort(key)][:size].to(torch.int64)


@dataclass
class ProbeSet:
    """A fixed probe: inputs, their labels and where they came from.

    Attributes:
        inputs: stacked inputs, shape (I, ...), on the CPU (move them to the model's device).
        labels: int64 labels, shape (I,).
        indices: int64 indices of the examples in the source dataset (for
            :meth:`from_dataloader`: positions in the loader's iteration order).
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    @classmethod
    def from_dataset(cls, dataset: Any, size: int = 256, seed: int = 0) -> ProbeSet:
        """Probe drawn from a map-style dataset returning ``(input, label, ...)``.

        Labels are read without loading any input when the dataset exposes them
        (``targets`` / ``labels`` attributes as in torchvision, ``TensorDataset``, ``Subset`` of
        such datasets); otherwise every example is loaded once to read its label. Only the chosen
        examples are then loaded for their inputs.
        """
        labels = dataset_labels(dataset)
        indices = select_probe(labels, size, seed)
        items = [dataset[int(i)] for i in indices]
        inputs = torch.stack([torch.as_tensor(item[0]) for item in items]) if items else None
        if inputs is None:
            inputs = torch.empty(0)
        return cls(inputs, labels[indices], indices)

    @classmethod
    def from_dataloader(
        cls,
        dataloader: Iterable[Any],
        size: int = 256,
        seed: int = 0,
        max_batches: int | None = None,
    ) -> ProbeSet:
        """Probe drawn from the batches of a loader yielding ``(inputs, labels, ...)`` or dicts
        (the formats of :func:`split_batch`).

        At most ``max_batches`` batches are read (all when None). Only the first ``size`` examples
        of each class are kept as candidates (no class can need more), so memory stays bounded
        by ``size`` times the number of classes. Iterating a shuffling loader advances its
        sampler's random state: prefer a non-shuffled validation loader.

        Raises:
            ProbeError: a batch that :func:`split_batch` cannot read.
        """
        kept_inputs: list[torch.Tensor] = []
        kept_labels: list[torch.Tensor] = []
        kept_positions: list[torch.Tensor] = []
        seen_per_class: dict[int, int] = {}
        position = 0
        for batch_index, batch in enumerate(dataloader):
            if max_batches is not None and batch_index >= max_batches:
                break
            inputs, labels = split_batch(batch)
            inputs = inputs.detach().to("cpu")
            labels = labels.detach().to("cpu")
            keep = torch.zeros(labels.numel(), dtype=torch.bool)
            for j, label in enumerate(labels.tolist()):
                seen = seen_per_class.get(label, 0)
                if seen < size:
                    keep[j] = True
                seen_per_class[label] = seen + 1
            if bool(keep.any()):
                kept_inputs.append(inputs[keep])
                kept_labels.append(labels[keep])
                kept_positions.append(torch.arange(position, position + labels.numel())[keep])
            position += labels.numel()
        if not kept_labels:
            empty = torch.empty(0, dtype=torch.int64)
            return cls(torch.empty(0), empty, empty)
        pool_labels = torch.cat(kept_labels)
        chosen = select_probe(pool_labels, size, seed)
        return cls(
            torch.cat(kept_inputs)[chosen], pool_labels[chosen], torch.cat(kept_positions)[chosen]
        )


def dataset_labels(dataset: Any) -> torch.Tensor:
    """All labels of a map-style dataset (int64, CPU); inputs are read only as a last resort."""
    labels = _labels_without_inputs(dataset)
    if labels is None:
        labels = [int(torch.as_tensor(dataset[i][1])) for i in range(len(dataset))]
    return torch.as_tensor(labels, dtype=torch.int64).reshape(-1)


def _labels_without_inputs(dataset: Any) -> torch.Tensor | None:
    subset_indices = getattr(dataset, "indices", None)
    parent = getattr(dataset, "dataset", None)
    if parent is not None and subset_indices is not None:  # torch.utils.data.Subset
        parent_labels = _labels_without_inputs(parent)
        if parent_labels is None:
            return None
        return parent_labels[torch.as_tensor(subset_indices, dtype=torch.int64)]
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, Sequence) and len(tensors) >= 2:  # TensorDataset
        return torch.as_tensor(tensors[1]).to("cpu").reshape(-1).to(torch.int64)
    for attribute in ("targets", "labels"):
        values = getattr(dataset, attribute, None)
        if values is None or callable(values):
            continue
        try:
            tensor = torch.as_tensor(values).to("cpu").reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            continue
        if tensor.numel() == len(dataset) and not tensor.is_floating_point():
            return tensor.to(torch.int64)
    return None


def capture_activations(
    model: nn.Module,
    inputs: torch.Tensor,
    layer_names: Sequence[str],
    batch_size: int = 256,
    keep: str = "both",
) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """What each named layer receives and returns on ``inputs``, from one pass over them.

    Forward hooks on the named modules record ``(input, output)`` of every batch of ``batch_size``
    inputs (moved to the model's device); the pieces are concatenated along the batch axis and
    left on that device. Runs under ``torch.no_grad()``; the hooks are removed afterwards, also
    when the forward pass raises.

    The model's train/eval mode is *not* changed: in train mode batch-norm statistics are updated
    and dropout draws from the global RNG, so the caller should switch to eval mode (and restore
    the mode) around this call. Recorded tensors are cloned, so later in-place operations of the
    forward pass (``ReLU(inplace=True)``, ``x += residual``) cannot alter them. A module called
    several times per forward pass records its first call of each batch.

    Args:
        model: the network.
        inputs: a tensor of shape (I, ...).
        layer_names: qualified module names (``model.named_modules()``).
        batch_size: examples per forward pass.
        keep: ``"both"``, ``"input"`` or ``"output"``; the other entry of the pair is None.

    Raises:
        ValueError: an unknown layer name, a bad ``keep`` or ``batch_size``.
    """
    if keep not in ("both", "input", "output"):
        raise ValueError(f"keep must be 'both', 'input' or 'output', got {keep!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    modules = dict(named_modules(model))
    missing = [name for name in layer_names if name not in modules]
    if missing:
        raise ValueError(f"unknown layer names: {missing}")
    device = next((p.device for p in model.parameters()), inputs.device)
    pieces: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {
        name: ([], []) for name in layer_names
    }
    seen_this_batch: set[str] = set()

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if name in seen_this_batch:
                return
            seen_this_batch.add(name)
            ins, outs = pieces[name]
            if keep != "output":
                ins.append(first_tensor(args).detach().clone())
            if keep != "input":
                outs.append(first_tensor(output).detach().clone())

        return hook

    handles = [modules[name].register_forward_hook(make_hook(name)) for name in layer_names]
    try:
        with torch.no_grad():
            for start in range(0, inputs.shape[0], batch_size):
                seen_this_batch.clear()
                model(inputs[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {
        name: (
            torch.cat(ins) if ins else None,
            torch.cat(outs) if outs else None,
        )
        for name, (ins, outs) in pieces.items()
    }


def first_tensor(value: Any) -> torch.Tensor:
    """The tensor itself, or the first tensor of a tuple/list (a hooked input or output)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"no tensor in a hooked value of type {type(value).__name__}")


class ProbeError(ValueError):
    """A loader whose batches cannot give a probe (the message says why)."""


INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values")
"""Keys of the inputs in a dict batch, in the order they are looked for."""
TARGET_KEYS = ("y", "label", "labels", "target", "targets")
"""Keys of the targets in a dict batch, in the order they are looked for."""


class BatchParts(NamedTuple):
    """What :func:`read_batch` found in a batch."""

    inputs: Any
    """The model's inputs (None for an empty sequence or a dict without keys)."""
    targets: Any
    """The targets, None when the batch holds none."""
    key: str | None
    """The key of the inputs in a dict batch (to rebuild ``{key: inputs}``), else None."""


def read_batch(batch: Any, *, strict: bool = False) -> BatchParts:
    """The inputs and targets of one batch as a loader yields it.

    - a mapping: the inputs under the first of :data:`INPUT_KEYS` present (else under its first
      key), the targets under the first of :data:`TARGET_KEYS` present (else None);
    - a tuple or list: the first item is the input, the second the target (further items, e.g.
      sample weights or ids, are ignored);
    - anything else: the batch itself is the input, without targets.

    Args:
        batch: one batch.
        strict: require inputs and targets: a mapping must hold an input key and a target key
            of the lists above, a sequence at least two items.

    Raises:
        ProbeError: with ``strict``, a batch without both.
    """
    if isinstance(batch, Mapping):
        key = next((k for k in INPUT_KEYS if k in batch), None)
        target_key = next((k for k in TARGET_KEYS if k in batch), None)
        if strict and (key is None or target_key is None):
            raise ProbeError(
                f"a dict batch needs an input key {INPUT_KEYS} and a target key {TARGET_KEYS}; "
                f"got keys {sorted(map(str, batch))}: pass a ProbeSet instead")
        key = key if key is not None else next(iter(batch), None)
        return BatchParts(None if key is None else batch[key],
                          None if target_key is None else batch[target_key], key)
    if isinstance(batch, (tuple, list)) and (len(batch) >= 2 or not strict):
        return BatchParts(batch[0] if batch else None, batch[1] if len(batch) >= 2 else None,
                          None)
    if strict:
        raise ProbeError(f"cannot read (inputs, targets) from a batch of type "
                         f"{type(batch).__name__}: pass a ProbeSet instead")
    return BatchParts(batch, None, None)


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of one batch of a classification task, read by
    :func:`read_batch` (``strict``), the targets as int64 class labels.

    Raises:
        ProbeError: a batch without inputs and targets, a non-tensor input, or targets that are
            not one integer class label per example (floating-point regression targets, one-hot
            rows).
    """
    inputs, targets, _ = read_batch(batch, strict=True)
    if not isinstance(inputs, torch.Tensor):
        raise ProbeError(f"batch inputs of type {type(inputs).__name__} are not a tensor: pass "
                         "a ProbeSet instead")
    try:
        targets = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ProbeError(f"batch targets are not a tensor ({error})") from error
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ProbeError(f"targets of dtype {targets.dtype} are not integer class labels (a "
                         "regression task?)")
    if targets.dim() > 1 and not (targets.dim() == 2 and targets.shape[1] == 1):
        raise ProbeError(f"targets of shape {tuple(targets.shape)} are not one class label per "
                         "example (one-hot or multi-label targets?)")
    targets = targets.reshape(-1)
    if targets.numel() != inputs.shape[0]:
        raise ProbeError(f"{targets.numel()} targets for {inputs.shape[0]} inputs")
    return inputs, targets.to(torch.int64)


def probe_from_loader(
    loader: Iterable[Any], size: int = 256, seed: int = 0, max_batches: int | None = None
) -> ProbeSet:
    """A class-stratified probe from a loader's batches (:meth:`ProbeSet.from_dataloader`,
    with the batch formats of :func:`split_batch`). ``indices`` are positions in the loader's
    iteration order.

    Raises:
        ProbeError: unreadable batches, non-class targets, or no example at all.
    """
    probe = ProbeSet.from_dataloader(loader, size, seed, max_batches)
    if len(probe) == 0:
        raise ProbeError("the loader yielded no example")
    if int(probe.labels.min()) < 0:
        raise ProbeError("targets hold negative class labels")
    return probe


def probe_at_positions(
    loader: Iterable[Any], positions: Sequence[int], labels: Sequence[int]
) -> ProbeSet:
    """The probe at ``positions`` of the loader's iteration order, checked against the
    ``labels`` recorded when it was chosen (a resumed run sees the same images).

    Raises:
        ProbeError: the loader is shorter or its labels differ (the data changed).
    """
    wanted = {int(p): i for i, p in enumerate(positions)}
    inputs: list[torch.Tensor | None] = [None] * len(wanted)
    found: list[int] = [0] * len(wanted)
    position, remaining = 0, len(wanted)
    for batch in loader:
        x, y = split_batch(batch)
        for j in range(y.numel()):
            slot = wanted.get(position + j)
            if slot is not None:
                inputs[slot] = x[j].detach().to("cpu")
                found[slot] = int(y[j])
                remaining -= 1
        position += y.numel()
        if remaining == 0:
            break
    if remaining:
        raise ProbeError(f"the loader holds {position} examples; {remaining} probe positions "
                         "are beyond its end")
    if found != [int(v) for v in labels]:
        raise ProbeError("the labels at the recorded probe positions differ from those recorded")
    return ProbeSet(torch.stack(inputs), torch.tensor(found, dtype=torch.int64),  # type: ignore[arg-type]
                    torch.tensor([int(p) for p in positions], dtype=torch.int64))
