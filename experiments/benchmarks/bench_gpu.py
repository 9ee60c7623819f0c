"""Cost of one analysis against one training step, on the same device (a GPU when present).

Models, randomly initialised (nothing downloaded): torchvision ``resnet50(weights=None)`` and
``vit_b_16(weights=None)``; a step is SGD (momentum 0.9) on a cross-entropy loss over a batch of
random 224x224 images. "One analysis" is ``analyze(model)`` with the monitor's defaults
(unfold, ``svd_method="auto"``: float32 ``svdvals`` on CUDA, float64 Gram on the CPU, the default
metric groups) on the model's device, and the spectra and norms alone (``metrics="norms"``).
Each time is the median of ``--repeats`` runs after one warm-up, with ``torch.cuda.synchronize``
around each run on CUDA.

    .venv/bin/python -m experiments.benchmarks.bench_gpu [--device cuda] [--batch 32]

``--smoke``: a one-block-per-stage ResNet and a one-layer ViT at 32x32, batch 4 (a CPU test runs
it); the numbers then say nothing about the full models.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.benchmarks.bench_gpu")

import argparse
import warnings

import torch
from torch.nn import functional as F

from experiments.benchmarks.timing import median_time
from svd_callback.analysis import analyze
from svd_callback.config import AnalysisConfig
from svd_callback.spectra.solver import auto_method


def models(smoke: bool) -> dict[str, tuple[torch.nn.Module, int]]:
    """Name -> (model, image size)."""
    import torchvision
    from torchvision.models.resnet import BasicBlock, ResNet
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    if smoke:
        return {"resnet (smoke)": (ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), 32),
                "vit (smoke)": (VisionTransformer(32, 8, num_layers=1, num_heads=2,
                                                  hidden_dim=32, mlp_dim=64,
                                                  num_classes=10), 32)}
    return {"resnet50": (torchvision.models.resnet50(weights=None), 224),
            "vit_b_16": (torchvision.models.vit_b_16(weights=None), 224)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny models (a CPU test runs it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch, repeats = (4, 1) if args.smoke else (args.batch, args.repeats)
    warnings.simplefilter("ignore")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; svd_method auto -> {auto_method(torch.float32, device.type)}; "
          f"batch {batch}; median of {repeats}")
    print(f"{'model':<16} {'step s':>8} {'analysis s':>11} {'norms s':>8} {'analysis/step':>14} "
          f"{'records':>8}")
    records: list[int] = []
    for label, (model, size) in models(args.smoke).items():
        model = model.to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        images = torch.randn(batch, 3, size, size, device=device)
        labels = torch.randint(0, 10, (batch,), device=device)

        def step(model=model, optimizer=optimizer, images=images, labels=labels) -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

        def full(model=model) -> None:
            with torch.no_grad():
                records.append(len(analyze(model, config=AnalysisConfig())))

        def norms(model=model) -> None:
            with torch.no_grad():
                analyze(model, config=AnalysisConfig(metrics="norms"))

        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        t_step, _ = median_time(step, repeats, warmup=True, sync=sync)
        t_full, _ = median_time(full, repeats, warmup=True, sync=sync)
        t_norms, _ = median_time(norms, repeats, warmup=True, sync=sync)
        print(f"{label:<16} {t_step:>8.3f} {t_full:>11.3f} {t_norms:>8.3f} "
              f"{t_full / t_step:>14.1f} {records[-1]:>8}")


if __name__ == "__main__":
    main()
