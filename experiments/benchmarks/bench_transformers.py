"""Cost of one analysis of a transformer against one training step, CPU, pinned threads.

Two models, randomly initialised from their configs (nothing downloaded):

- GPT-2 small (``transformers.GPT2Config()``: 12 layers, n_embd 768, 12 heads, vocabulary
  50257): a language-model step (AdamW) on a batch of random tokens; the analysis covers the
  36 query/key/value blocks of the packed ``c_attn``, the 48 other ``Conv1D`` maps and
  ``lm_head`` (tied to ``wte``; with ``--embeddings`` also ``wte`` and ``wpe``, ``lm_head``
  then reported as tied);
- torchvision ``vit_b_16(weights=None)``: a classification step (SGD, cross-entropy) on random
  224x224 images; the analysis covers the 36 query/key/value blocks of the
  ``nn.MultiheadAttention`` layers, their ``out_proj``, the MLPs, ``conv_proj`` and the head;
- with ``--only-swin``, torchvision ``swin_t(weights=None)`` alone, the same step: the 36
  query/key/value blocks of the packed ``qkv`` linears, 40 other linears and the patch conv.

"One analysis" is ``analyze(model)`` with the monitor's defaults (unfold, float64 Gram
eigenvalues, KS power-law fit), and beside it the spectra and norms alone (``metrics="norms"``).
Each time is the median of ``--repeats`` runs after one warm-up.
Reported as the ratio analysis / step.

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 \
        .venv/bin/python -m experiments.benchmarks.bench_transformers
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.benchmarks.bench_transformers")

import argparse
import logging
import warnings
from collections.abc import Callable

import torch
from torch.nn import functional as F

from experiments.benchmarks.timing import median_time
from svd_callback.analysis import analyze


def gpt2_small(batch: int, seq: int) -> tuple[torch.nn.Module, Callable[[], object]]:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()

    return model.train(), step


def vit_b_16(batch: int, arch: str = "vit_b_16") -> tuple[torch.nn.Module, Callable[[], object]]:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return model.train(), step


def measure(name: str, model: torch.nn.Module, step: Callable[[], object], repeats: int,
            embeddings: bool) -> None:
    report = analyze(model, embeddings=embeddings)
    analysed = report.analysed()
    kinds = {k: sum(r.kind == k for r in analysed) for k in dict.fromkeys(r.kind for r in analysed)}
    blocks = sum(r.name.endswith((".q", ".k", ".v")) for r in analysed)
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{len(analysed)} matrices analysed {kinds} ({blocks} q/k/v blocks), "
          f"{len(report) - len(analysed)} skipped with a reason")
    for record in report:
        if record.reason is not None:
            print(f"    skipped {record.name}: {record.reason}")
    t_step, _ = median_time(step, repeats, warmup=True)
    t_analysis, _ = median_time(lambda: analyze(model, embeddings=embeddings), repeats,
                                warmup=True)
    t_spectra, _ = median_time(lambda: analyze(model, embeddings=embeddings, metrics="norms"),
                               repeats, warmup=True)
    print(f"    step {t_step:7.3f} s   analysis {t_analysis:7.3f} s (spectra and norms alone, "
          f"metrics=norms: {t_spectra:7.3f} s)   analysis / step = {t_analysis / t_step:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128, help="GPT-2 tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embeddings", action="store_true", help="also analyse embeddings")
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--only-swin", action="store_true", help="torchvision swin_t alone")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"analyze(): unfold, float64 Gram, KS fit, embeddings={args.embeddings}")
    if args.only_swin:
        model, step = vit_b_16(args.batch, "swin_t")
        measure(f"swin_t, {args.batch} images 224x224", model, step, args.repeats,
                args.embeddings)
        return
    model, step = gpt2_small(args.batch, args.seq)
    measure(f"GPT-2 small, {args.batch} x {args.seq} tokens", model, step, args.repeats,
            args.embeddings)
    del model, step
    if not args.skip_vit:
        model, step = vit_b_16(args.batch)
        measure(f"vit_b_16, {args.batch} images 224x224", model, step, args.repeats,
                args.embeddings)


if __name__ == "__main__":
    main()
