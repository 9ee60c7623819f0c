"""factorization_rank at paper-like scale: the cached BatchNorm ResNet-8 runs on Fashion-MNIST
(:mod:`experiments.resnet_checkpoints`) at init, the middle epoch and the last epoch, per
training seed; the same factorization as the SmallCNN path
(:func:`experiments.factorization_rank.run.ranks_for`) on the post-ReLU outputs of the last two
residual blocks."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from experiments.common import command_line, fmt, machine_line, markdown_table, write_results
from experiments.factorization_rank.run import _mean_fits, _median_rank, ranks_for
from experiments.resnet_checkpoints import KIND, RESNET, trained_runs
from experiments.seed_stats import spread

BLOCK = "resnet"
LAYERS = {"block2 (stage2.0)": "stage2.0", "block3 (stage3.0)": "stage3.0"}
"""Table name -> residual block whose output, relu(conv path + shortcut), is factorised
(block2: 32 channels at 7x7; block3: 64 channels at 4x4, for 28x28 inputs)."""


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    runs = trained_runs(list(args.seeds), root=args.root)
    kind = RESNET.kind(KIND)
    results: dict[int, dict[str, dict]] = {}
    states: dict[str, int] = {}
    for run in runs:
        states = {"init": 0, f"epoch {run.middle_epoch}": run.middle_epoch,
                  f"epoch {run.final_epoch}": run.final_epoch}
        datamodule = RESNET.datamodule(kind, run.seed, root=args.root)
        results[run.seed] = {}
        for state, epoch in states.items():
            results[run.seed][state] = ranks_for(run.model(epoch), datamodule, args, LAYERS)
            print(run.seed, state, {k: [e["rank"] for e in v]
                                    for k, v in results[run.seed][state].items()}, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "factorization_rank_resnet.json").write_text(json.dumps(results, indent=1))
    names = list(states)
    acc = {run.seed: {s: run.epochs[e]["val_acc"] for s, e in states.items()} for run in runs}
    init, last = names[0], names[-1]

    lines, table = [], []
    for name in LAYERS:
        for key, threshold in zip(["rank", *(f"rank@{t:g}" for t in args.other_thresholds)],
                                  [args.threshold, *args.other_thresholds], strict=True):
            medians = {s: {st: _median_rank(results[s][st][name], key) for st in names}
                       for s in results}
            per_state = ", ".join(f"{st} {spread(m[st] for m in medians.values()).text(2)}"
                                  for st in names)
            change = spread(m[last] - m[init] for m in medians.values())
            lines.append(f"- {name}, CORCONDIA >= {threshold:g}: median chosen rank over rank "
                         f"seeds, per training seed: {per_state}; change {init} -> {last}: "
                         f"{change.text(2)}.")
        fit1 = {s: {st: _mean_fits(results[s][st][name])[0] for st in names} for s in results}
        per_state = ", ".join(f"{st} {spread(f[st] for f in fit1.values()).text()}"
                              for st in names)
        change = spread(f[last] - f[init] for f in fit1.values())
        lines.append(f"- {name}, CP fit at F = 1 (mean over rank seeds; lower = more "
                     f"components needed): {per_state}; change {init} -> {last}: "
                     f"{change.text()}.")
        for s in results:
            for st in names:
                fits = _mean_fits(results[s][st][name])
                ranks = [e["rank"] for e in results[s][st][name]]
                cc = [statistics.fmean(e["corcondia"][f] for e in results[s][st][name])
                      for f in range(len(fits))]
                table.append([name, s, st, acc[s][st],
                              " ".join("none" if r is None else str(r) for r in ranks),
                              " ".join(f"{v:.3f}" for v in fits),
                              " ".join(f"{v:.0f}" for v in cc)])
    shape = next(iter(results[runs[0].seed][init].values()))[0]["shape"]
    generated = "\n".join([
        f"Command: `{command_line()}`",
        "",
        f"Machine: {machine_line()}. Wall time {time.perf_counter() - started:.0f} s "
        "(factorizations; trained runs from the cache of `experiments.resnet_checkpoints`).",
        "",
        f"**Protocol.** {RESNET.what}; {RESNET.epochs} epochs of `{kind.name}` ({kind.what}), "
        f"training seeds {', '.join(str(r.seed) for r in runs)}. States per seed: "
        f"{', '.join(names)}. For each state and each watched block output (post-ReLU), a "
        f"{args.probe_size}-image class-stratified probe of the test set per rank seed "
        f"({', '.join(map(str, args.rank_seeds))}), `factorization_rank(max_rank="
        f"{args.max_rank}, threshold={args.threshold}, n_starts={args.n_starts}, max_images="
        f"{args.max_images})` (tensor bounded to images x channels x <= 16 pooled positions, "
        f"e.g. {shape[0]}x{shape[1]}x{shape[2]}). Per training seed the median chosen rank "
        "over rank seeds and the mean CP fit; spreads over training seeds: mean ± sample std, "
        "range, 95% Student-t interval of the mean.",
        "",
        "Test accuracy per state: " + "; ".join(
            f"{st} {spread(a[st] for a in acc.values()).text(4)}" for st in names) + ".",
        "",
        "### Numbers (computed)",
        "",
        *lines,
        "",
        "### Per training seed and state",
        "",
        markdown_table(["layer", "seed", "state", "test acc", "rank per rank seed",
                        "mean fit F=1..", "mean CORCONDIA F=1.."], table),
    ])
    path = write_results(args.results, "factorization_rank: CP rank of hidden activations, well "
                         "vs poorly trained", generated, block_name=BLOCK)
    print(generated)
    print(f"\nwrote {path} ({fmt(float(len(table)))} rows)")
    return 0
