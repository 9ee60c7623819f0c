"""Benchmark of svd_callback.spectra on torchvision's ResNet-18 against the LAPACK floor.

For every conv and linear layer of ``resnet18(num_classes=10)`` (real input sizes taken from
forward hooks on one 1x3xSxS pass), time the three conv modes with the stacked functions
(layers of identical shape batched in one call) against the floor: bare batched
``torch.linalg.svdvals`` of the same matrices with the same stacking, built beforehand and not
timed. The operator floor's matrices are built independently here with ``torch.fft.rfftn`` of
the zero-padded, wrapped, polyphase-split kernel (the half spectrum Sedghi et al. decompose),
and the spectra assembled from them are checked against ours.

Targets: unfold and slices within 1.5x of the floor, operator within 2x.

Run (one heavy job at a time on a shared machine):
    flock /tmp/bench.lock env OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 \
        .venv/bin/python -m experiments.benchmarks.bench_spectra --threads 2
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision

from svd_callback.spectra import (
    stacked_operator_svdvals,
    stacked_slice_matrices,
    stacked_slice_svdvals,
    stacked_unfold_matrices,
    stacked_unfold_svdvals,
)


@dataclass
class LayerInfo:
    name: str
    weight: torch.Tensor
    input_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int


def resnet18_layers(image_size: int) -> list[LayerInfo]:
    """Conv and linear layers of ResNet-18 with their real input sizes (forward hooks)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    sizes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):

            def hook(mod, inputs, output, name=name):
                sizes[name] = tuple(inputs[0].shape[2:])

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    for handle in handles:
        handle.remove()
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            layers.append(
                LayerInfo(
                    name,
                    module.weight.detach(),
                    sizes[name],
                    module.stride,
                    module.dilation,
                    module.groups,
                )
            )
        elif isinstance(module, torch.nn.Linear):
            layers.append(LayerInfo(name, module.weight.detach(), (), (), (), 1))
    return layers


def batches(layers: list[LayerInfo], key: Callable[[LayerInfo], tuple]) -> list[list[LayerInfo]]:
    out: dict[tuple, list[LayerInfo]] = {}
    for layer in layers:
        out.setdefault(key(layer), []).append(layer)
    return list(out.values())


def stack(batch: list[LayerInfo]) -> torch.Tensor:
    return torch.stack([layer.weight for layer in batch])


def fft_operator_blocks(batch: list[LayerInfo]) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-spectrum blocks via rfftn, independent of spectra.py; with each block's multiplicity."""
    weights = stack(batch)
    first = batch[0]
    if weights.dim() == 3:  # linear
        return weights, torch.ones(weights.shape[0], dtype=torch.long)
    layers, d, c, kh, kw = weights.shape
    (n0, n1), (s0, s1), (d0, d1), g = first.input_size, first.stride, first.dilation, first.groups
    rows = torch.zeros(layers, d, c, n0, kw).index_add_(3, (d0 * torch.arange(kh)) % n0, weights)
    grid = torch.zeros(layers, d, c, n0, n1).index_add_(4, (d1 * torch.arange(kw)) % n1, rows)
    poly = grid.reshape(layers, g, d // g, c, n0 // s0, s0, n1 // s1, s1)
    spec = torch.fft.rfftn(poly, dim=(4, 6))  # (L, g, dg, c, n0', s0, m1, s1)
    m1 = spec.shape[6]
    blocks = spec.permute(0, 1, 4, 6, 2, 3, 5, 7).reshape(-1, d // g, c * s0 * s1)
    f_last = torch.arange(m1)
    mult = torch.where((f_last > 0) & (2 * f_last != n1 // s1), 2, 1)
    return blocks, mult.repeat(layers * g * (n0 // s0))


def best_of(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best wall time of each function; repeats interleaved so that load drifts hit all alike."""
    times = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i] = min(times[i], time.perf_counter() - start)
    return times


def max_error(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return max(
        float(((o.double() - r).abs() / r[:, :1]).max())
        for o, r in zip(ours, reference, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    layers = resnet18_layers(args.image_size)
    by_shape = batches(layers, lambda layer: (tuple(layer.weight.shape), layer.groups))
    by_operator = batches(
        layers,
        lambda layer: (
            tuple(layer.weight.shape),
            layer.input_size,
            layer.stride,
            layer.dilation,
            layer.groups,
        ),
    )

    def unfold(method: str, dtype=torch.float32) -> list[torch.Tensor]:
        return [
            stacked_unfold_svdvals(stack(b).to(dtype), b[0].groups, method=method) for b in by_shape
        ]

    def slices(method: str, dtype=torch.float32) -> list[torch.Tensor]:
        return [stacked_slice_svdvals(stack(b).to(dtype), method=method) for b in by_shape]

    def operator(method: str, dtype=torch.float32) -> list[torch.Tensor]:
        out = []
        for b in by_operator:
            first = b[0]
            out.append(
                stacked_operator_svdvals(
                    stack(b).to(dtype),
                    first.input_size,
                    first.stride or 1,
                    first.dilation or 1,
                    first.groups,
                    method=method,
                )
            )
        return out

    floor_mats = {
        "unfold": [
            stacked_unfold_matrices(stack(b), b[0].groups).flatten(0, 1).contiguous()
            for b in by_shape
        ],
        "slices": [stacked_slice_matrices(stack(b)).flatten(0, 1).contiguous() for b in by_shape],
        "operator": [fft_operator_blocks(b)[0].contiguous() for b in by_operator],
    }

    # the operator spectra assembled from the independent rfftn blocks must equal ours
    for b, ours in zip(by_operator, operator("auto"), strict=True):
        blocks, mult = fft_operator_blocks(b)
        svals = torch.linalg.svdvals(blocks.to(torch.complex128))
        ref = svals.repeat_interleave(mult, dim=0).reshape(len(b), -1)
        ref = ref.sort(dim=1, descending=True).values
        err = float((ours.double() - ref).abs().max() / ref[:, :1].min())
        assert err < 1e-5, (b[0].name, err)

    def floor(mode: str) -> None:
        for mats in floor_mats[mode]:
            torch.linalg.svdvals(mats)

    def fft_assembly() -> None:
        for b in by_operator:
            fft_operator_blocks(b)

    runs = {"unfold": unfold, "slices": slices, "operator": operator}
    print(
        f"resnet18(num_classes=10), {args.image_size}x{args.image_size} input, "
        f"{len(layers)} layers, torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"best of {args.repeats}"
    )
    print(
        f"{'mode':9s} {'batches':>7s} {'floor s':>8s} {'auto s':>8s} {'svd s':>8s} "
        f"{'auto/floor':>10s} {'svd/floor':>9s} {'err auto':>9s} {'err svd':>9s}  target"
    )
    targets = {"unfold": 1.5, "slices": 1.5, "operator": 2.0}
    for mode, run in runs.items():
        run("auto")  # warm-up
        t_floor, t_auto, t_svd = best_of(
            [
                lambda mode=mode: floor(mode),
                lambda run=run: run("auto"),
                lambda run=run: run("svd"),
            ],
            args.repeats,
        )
        n_batches = len(floor_mats[mode])
        verdict = "ok" if t_auto / t_floor <= targets[mode] else "MISSED"
        reference = run("svd", torch.float64)
        err = {m: max_error(run(m), reference) for m in ("auto", "svd")}
        print(
            f"{mode:9s} {n_batches:7d} {t_floor:8.3f} {t_auto:8.3f} {t_svd:8.3f} "
            f"{t_auto / t_floor:10.2f} {t_svd / t_floor:9.2f} {err['auto']:9.1e} "
            f"{err['svd']:9.1e}  <= {targets[mode]} {verdict}"
        )
    print("err: max |sigma - sigma_float64| / sigma_max over all layers (float32 weights)")
    (t_fft,) = best_of([fft_assembly], args.repeats)
    print(f"operator blocks via rfftn (assembly only, for comparison): {t_fft:.4f} s")


if __name__ == "__main__":
    main()
