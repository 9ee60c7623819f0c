"""Cost of the class-level analysis against one training epoch, on 8x8 digits.

Model: the example ``SmallCNN`` (3 convs, a hidden and a classifier linear layer) on scikit-learn's
bundled digits (80 % class-stratified training split, 1437 images; nothing is downloaded).

- floor: one training epoch in a plain PyTorch loop (Adam, batch 64, shuffled), no Lightning;
- class analysis, as run at an epoch end: a 256-image class-stratified probe (chosen once, not
  timed per epoch), one captured forward pass over all 5 layers (eval mode, restored), SVD-neuron
  signals of the top-32 neurons of every layer, class means, hyperedges (tau = 0.5) and
  hypergraph statistics against the previous epoch's edges, and class-specific features of the
  classifier's input;
- factorization rank of the last conv block's post-ReLU activations (defaults: F <= 6, 3 starts),
  with the torch HALS engine and with TensorLy's, timed separately;
- the driver ``analyze_classes`` as ``SpectralMonitor(class_analysis=True)`` runs it (a 256-image
  probe of the validation split, every layer, previous edges tracked), against the same epoch;
- end to end in Lightning (the digits demo's trainer settings, no logger): ``--lightning-epochs``
  epochs without the monitor, with ``SpectralMonitor()`` and with
  ``SpectralMonitor(class_analysis=True)``, same seed; the extra wall time of the class analysis
  per analysis (initial weights + one per epoch) against one plain Lightning epoch.

Each timing is the median of ``--repeats`` runs in one process with pinned threads; the printed
ratios are class analysis / epoch (target < 1) and factorization / epoch.

Run (one heavy job at a time on a shared machine):
    flock /tmp/bench.lock env OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 \
        .venv/bin/python -m experiments.benchmarks.bench_classes --threads 2
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.benchmarks.bench_classes")

import argparse
import tempfile
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from experiments.benchmarks.timing import median_time
from svd_callback.callback import SpectralMonitor
from svd_callback.classes import (
    ConvParams,
    ProbeSet,
    capture_activations,
    class_hyperedges,
    class_mean_signals,
    class_specific_features,
    factorization_rank,
    find_penultimate_layer,
    hypergraph_stats,
    neuron_signals,
)
from svd_callback.classes.analysis import ClassTracker, analyze_classes, probe_from_loader
from svd_callback.examples import DigitsDataModule, SmallCNN

NUM_CLASSES = 10
TOP_K = 32


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> float:
    model.train()
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return total / len(loader)


def class_analysis(
    model: nn.Module, probe: ProbeSet, layers: list[str], head: str, previous: dict
) -> dict:
    """One epoch-end class analysis; ``previous`` carries last epoch's edges and feature sets."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        captured = capture_activations(model, probe.inputs, layers, batch_size=256, keep="input")
    finally:
        for module, mode in modes.items():
            module.train(mode)
    modules = dict(model.named_modules())
    out: dict = {}
    for name in layers:
        module = modules[name]
        params = ConvParams.from_module(module) if isinstance(module, nn.Conv2d) else None
        signals = neuron_signals(module.weight, captured[name][0], params, top_k=TOP_K)
        means = class_mean_signals(signals, probe.labels, NUM_CLASSES)
        edges = class_hyperedges(means, tau=0.5)
        stats = hypergraph_stats(edges, signals.values.shape[1], previous.get(name))
        previous[name] = edges
        out[name] = stats.scalars
    features = class_specific_features(
        captured[head][0], probe.labels, NUM_CLASSES, previous=previous.get("features")
    )
    previous["features"] = features
    out["features"] = features.scalars()
    return out


def lightning_fit(epochs: int, monitor: SpectralMonitor | None) -> float:
    """Wall time of ``epochs`` epochs of the digits demo's training (seeded, no logger)."""
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
        callbacks=[] if monitor is None else [monitor], enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
        default_root_dir=tempfile.gettempdir(),
    )
    start = time.perf_counter()
    trainer.fit(SmallCNN(), datamodule=DigitsDataModule())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warm-epochs", type=int, default=3, help="epochs trained before timing")
    parser.add_argument("--lightning-epochs", type=int, default=4,
                        help="epochs of the end-to-end Lightning comparison (0: skip it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = DigitsDataModule(batch_size=64)
    data.setup()
    loader = DataLoader(data.train_set, batch_size=64, shuffle=True)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(args.warm_epochs):
        train_epoch(model, loader, optimizer)

    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    head, reason = find_penultimate_layer(model)
    assert head is not None, reason
    probe_time, probe = median_time(lambda: ProbeSet.from_dataset(data.train_set, 256, 0), 1)

    epoch_time, _ = median_time(lambda: train_epoch(model, loader, optimizer), args.repeats)
    previous: dict = {}
    class_analysis(model, probe, layers, head, previous)  # warm-up, sets the previous epoch
    analysis_time, stats = median_time(
        lambda: class_analysis(model, probe, layers, head, previous), args.repeats
    )

    model.eval()
    relu_out = capture_activations(model, probe.inputs, ["features.6"], keep="output")
    activations = relu_out["features.6"][1]
    model.train()
    fact_time, fact = median_time(
        lambda: factorization_rank(activations), max(1, args.repeats // 2)
    )
    tl_time, tl_fact = median_time(lambda: factorization_rank(activations, engine="tensorly"), 1)

    val_probe = probe_from_loader(data.val_dataloader(), 256, 0)
    tracker = ClassTracker()
    analyze_classes(model, val_probe, tracker=tracker)  # warm-up, sets the previous edges
    driver_time, driver_report = median_time(
        lambda: analyze_classes(model, val_probe, tracker=tracker), args.repeats
    )

    fits = {}
    if args.lightning_epochs:
        lightning_fit(1, None)  # warm-up (imports, allocator)
        for label, monitor in (
            ("plain", None),
            ("spectral", SpectralMonitor(figures_every_n=0, history_file=None)),
            ("spectral+classes", SpectralMonitor(figures_every_n=0, history_file=None,
                                                 class_analysis=True)),
        ):
            fits[label] = (lightning_fit(args.lightning_epochs, monitor), monitor)

    print(f"threads={args.threads} repeats={args.repeats} torch={torch.__version__}")
    print(f"training set {len(data.train_set)} images, probe {len(probe)} images, layers {layers}")
    print(f"probe selection (once per run):        {probe_time * 1e3:8.1f} ms")
    print(f"one training epoch (plain loop):       {epoch_time * 1e3:8.1f} ms")
    print(f"class analysis (capture+signals+hg+f): {analysis_time * 1e3:8.1f} ms")
    print(f"  ratio class analysis / epoch:        {analysis_time / epoch_time:8.3f}  (target < 1)")
    print(f"factorization rank (torch HALS):       {fact_time * 1e3:8.1f} ms  tensor {fact.shape}")
    print(f"  ratio factorization / epoch:         {fact_time / epoch_time:8.3f}")
    print(f"factorization rank (TensorLy HALS):    {tl_time * 1e3:8.1f} ms")
    print(f"  ratio TensorLy / torch engine:       {tl_time / fact_time:8.3f}")
    print(
        f"  rank torch {fact.rank} / TensorLy {tl_fact.rank}; "
        f"CORCONDIA torch {[round(v, 1) for v in fact.corcondia.tolist()]}"
    )
    print(f"analyze_classes (driver, val probe):   {driver_time * 1e3:8.1f} ms  "
          f"reasons {driver_report.reasons or 'none'}")
    print(f"  ratio driver / epoch:                {driver_time / epoch_time:8.3f}  (target < 1)")
    if fits:
        epochs = args.lightning_epochs
        plain = fits["plain"][0] / epochs
        with_classes = fits["spectral+classes"][1]
        analyses = with_classes._analyses
        extra = (fits["spectral+classes"][0] - fits["spectral"][0]) / analyses
        inside = [r.seconds for r in [with_classes._last_class_report] if r is not None]
        print(f"Lightning, {epochs} epochs of 23 batches, {analyses} analyses per monitored run:")
        for label, (seconds, _) in fits.items():
            print(f"  {label:18s} {seconds:8.2f} s  ({seconds / epochs * 1e3:7.1f} ms per epoch)")
        print(f"  class analysis, extra per analysis:  {extra * 1e3:8.1f} ms  "
              f"(last one timed inside: {inside[0] * 1e3 if inside else float('nan'):.1f} ms)")
        print(f"  ratio extra per analysis / plain epoch: {extra / plain:8.3f}  (target < 1)")
    for name, scalars in stats.items():
        shown = {
            k: round(v, 3)
            for k, v in scalars.items()
            if k
            in (
                "jaccard_mean",
                "class_specific_fraction",
                "s_components_2",
                "edge_stability_mean",
                "feature_count_mean",
                "selectivity",
            )
        }
        print(f"  {name}: {shown}")


if __name__ == "__main__":
    main()
