"""Do trained conv layers look heavy-tailed, and random ones Marchenko-Pastur, in every conv mode?

The claim under test (Praggastis et al. 2022; docs/methods.md#spectra): the ESD of a trained
conv layer flattened in ``unfold`` mode is heavy-tailed like that of a trained linear layer,
while a randomly initialised one follows Marchenko-Pastur. Here the SmallCNN of
``svd_callback.examples`` is analysed in all three conv modes (``unfold``; ``operator`` on each
layer's real input size; ``slices``) with the power-law fit and the MP bulk fit, in three states:

- ``init``: the initial weights (PyTorch's default i.i.d. uniform init);
- ``trained``: after ``epochs`` epochs of Adam on a Fashion-MNIST subset;
- ``shuffled``: the trained weights with the entries of every layer randomly permuted (same
  entry distribution, no correlations): the RMT control for whether the trained spectrum owes
  its shape to learned correlations.

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 .venv/bin/python \
        -m experiments.rmt_validation.run --config configs/experiments/rmt_validation.yaml

``--model resnet`` runs the same analysis on the cached BatchNorm ResNet-8 runs on
Fashion-MNIST, one per training seed (``experiments/rmt_validation/resnet.py``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.rmt_validation.run")

import argparse
import copy
import time
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch

from experiments.arguments import (
    add_resnet_arguments,
    experiment_parser,
    parse_with_config,
    require_data,
)
from experiments.common import (
    EpochRecorder,
    command_line,
    fmt,
    image_size_of,
    machine_line,
    make_datamodule,
    markdown_table,
    trainer_for,
    write_results,
)
from svd_callback import analyze
from svd_callback.examples import SmallCNN

HERE = Path(__file__).resolve().parent
MODES = ("unfold", "operator", "slices")
COLUMNS = ["layer", "kind", "mode", "state", "matrix_shape", "n_svals", "alpha", "D", "xmin",
           "num_spikes", "mp_softrank", "lambda_plus", "stable_rank", "spectral_norm", "quality"]
MIN_EIGS_FOR_FIT = 30
"""Spectra with fewer eigenvalues are tabulated but left out of the verdicts: a power-law tail
fitted on a handful of points says nothing (random 128x10 layers already get alpha ~ 4)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(__doc__.splitlines()[0], HERE, train_size=6000, val_size=2000,
                               epochs=6)
    parser.add_argument("--seed", type=int, default=0)
    add_resnet_arguments(parser, "one verdict per seed of --seeds")
    return require_data(parse_with_config(parser, argv)[0])


def shuffled_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy whose every conv/linear weight has its entries randomly permuted."""
    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in clone.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                w = module.weight
                perm = torch.randperm(w.numel(), generator=generator)
                w.copy_(w.reshape(-1)[perm].reshape(w.shape))
    return clone


def entry_stats(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """layer -> (mean / std, excess kurtosis) of its weight entries: what shuffling keeps (a
    non-zero mean puts a rank-one spike in any spectrum, heavy-tailed entries a heavy tail)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            w = module.weight.detach().double().reshape(-1)
            centred = w - w.mean()
            std = float(centred.pow(2).mean().sqrt())
            out[name] = (float(w.mean()) / std, float(centred.pow(4).mean()) / std**4 - 3.0)
    return out


def analyse(model: torch.nn.Module, state: str, input_size: int) -> pd.DataFrame:
    report = analyze(model, MODES, input_size=input_size, metrics=("norms", "powerlaw", "mp"),
                     fit="ks")
    frame = report.to_dataframe()
    frame["state"] = state
    return frame[[c for c in COLUMNS if c in frame.columns]]


def mp_like(row: pd.Series) -> bool:
    """No eigenvalue beyond the fitted MP bulk edge plus its Tracy-Widom margin."""
    return row["num_spikes"] == 0


def verdicts(table: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """Per mode: which conv layers are MP at init, leave MP after training and return to MP when
    shuffled; the trained alpha beside the trained linear layers' alpha."""
    lines: list[str] = []
    rows = []
    pivot = table.set_index(["layer", "mode", "state"])
    linear = table[(table["kind"] == "linear") & (table["mode"] == "unfold")]
    linear_trained = linear[(linear["state"] == "trained")
                            & (linear["n_svals"] >= MIN_EIGS_FOR_FIT)]
    for mode in MODES:
        convs = table[(table["kind"] != "linear") & (table["mode"] == mode)
                      & (table["state"] == "init")]
        usable = convs[convs["n_svals"] >= MIN_EIGS_FOR_FIT]["layer"].tolist()
        held = []
        for layer in usable:
            init, trained, shuffled = (pivot.loc[(layer, mode, s)] for s in
                                       ("init", "trained", "shuffled"))
            random_mp = mp_like(init)
            trained_off_mp = trained["num_spikes"] > 0
            alpha_fell = trained["alpha"] < init["alpha"]
            ok = random_mp and trained_off_mp and alpha_fell
            held.append(ok)
            rows.append([mode, layer, int(init["n_svals"]), init["alpha"], trained["alpha"],
                         shuffled["alpha"], int(init["num_spikes"]), int(trained["num_spikes"]),
                         int(shuffled["num_spikes"]), init["mp_softrank"],
                         trained["mp_softrank"], shuffled["mp_softrank"], ok])
        skipped = sorted(set(convs["layer"]) - set(usable))
        n_ok = sum(held)
        lin = ", ".join(f"{r.layer} {fmt(r.alpha)}" for r in linear_trained.itertuples())
        trained_alphas = [r[4] for r in rows if r[0] == mode]
        verdict = ("holds" if held and all(held) else
                   "holds partly" if n_ok else "does not hold")
        lines.append(
            f"- **{mode}**: the claim {verdict} for {n_ok}/{len(held)} conv layers with >= "
            f"{MIN_EIGS_FOR_FIT} eigenvalues (criterion: no spike beyond the MP edge + TW margin "
            f"at init, >= 1 spike after training, and alpha lower after training). Trained conv "
            f"alpha: {', '.join(fmt(a) for a in trained_alphas) or '-'}; trained linear layers "
            f"(unfold, same fit): {lin or '-'}."
            + (f" Left out (fewer than {MIN_EIGS_FOR_FIT} eigenvalues): "
               f"{', '.join(skipped)}." if skipped else "")
        )
    header = ["mode", "conv layer", "n eigs", "alpha init", "alpha trained", "alpha shuffled",
              "spikes init", "spikes trained", "spikes shuffled", "softrank init",
              "softrank trained", "softrank shuffled", "claim holds"]
    return lines, pd.DataFrame(rows, columns=header)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model == "resnet":
        from experiments.rmt_validation import resnet

        return resnet.main(args)
    started = time.perf_counter()
    pl.seed_everything(args.seed, workers=True, verbose=False)
    size = image_size_of(args.dataset)
    model = SmallCNN(width=args.width, hidden=args.hidden, image_size=size, lr=args.lr)
    datamodule = make_datamodule(args.dataset, args.root, args.batch_size, args.train_size,
                                 args.val_size, args.seed)

    Path(args.out).mkdir(parents=True, exist_ok=True)
    frames = [analyse(model, "init", size)]
    entries = {"init": entry_stats(model)}
    t_analysis = time.perf_counter() - started
    recorder = EpochRecorder()
    trainer = trainer_for(args.epochs, [recorder])
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    frames.append(analyse(model, "trained", size))
    entries["trained"] = entry_stats(model)
    torch.save(model.state_dict(), Path(args.out) / "trained_state_dict.pt")
    frames.append(analyse(shuffled_copy(model, args.seed + 1), "shuffled", size))
    t_analysis += time.perf_counter() - t0
    table = pd.concat(frames, ignore_index=True)
    out = Path(args.out)
    table.to_csv(out / "rmt_validation.csv", index=False)

    lines, summary = verdicts(table)
    accuracy = recorder.rows[-1]["val_acc"]
    elapsed = time.perf_counter() - started
    layer_order = {name: i for i, name in enumerate(dict.fromkeys(table["layer"]))}
    detail = table.assign(_layer=table["layer"].map(layer_order))
    detail = detail.sort_values(["mode", "_layer", "state"], key=_order_key)
    generated = "\n".join([
        f"Command: `{command_line()}`",
        "",
        f"Machine: {machine_line()}. Wall time {elapsed:.0f} s (training {t_train:.0f} s, "
        f"analyses {t_analysis:.0f} s).",
        "",
        f"Model: SmallCNN(width={args.width}, hidden={args.hidden}) on {args.dataset} "
        f"(train {args.train_size}, validation {args.val_size}), Adam lr {args.lr}, "
        f"{args.epochs} epochs, seed {args.seed}. Validation accuracy per epoch: "
        + ", ".join(f"{r['val_acc']:.3f}" for r in recorder.rows) + f" (final {accuracy:.3f}).",
        "",
        "Eigenvalues lambda = sigma^2 (raw), power-law fit with KS-optimal xmin, MP bulk fitted "
        "to the ESD (num_spikes = eigenvalues beyond lambda_plus + Tracy-Widom margin, "
        "mp_softrank = lambda_plus / lambda_max). `shuffled` = trained weights with their "
        "entries permuted.",
        "",
        "### Verdict per mode (computed)",
        "",
        *lines,
        "",
        "### Conv layers: init vs trained vs shuffled",
        "",
        markdown_table(list(summary.columns), summary.itertuples(index=False)),
        "",
        "### Weight entries (kept by the shuffle)",
        "",
        markdown_table(["layer", "mean/std init", "mean/std trained", "excess kurtosis init",
                        "excess kurtosis trained"],
                       [[name, entries["init"][name][0], entries["trained"][name][0],
                         entries["init"][name][1], entries["trained"][name][1]]
                        for name in entries["init"]]),
        "",
        "### Every layer, mode and state",
        "",
        markdown_table(COLUMNS, detail[COLUMNS].itertuples(index=False)),
    ])
    path = write_results(args.results, "rmt_validation: heavy tails after training, in every "
                         "conv mode?", generated)
    print(generated)
    print(f"\nwrote {path} and {out / 'rmt_validation.csv'}")
    return 0


def _order_key(column: pd.Series) -> pd.Series:
    order = {"init": 0, "trained": 1, "shuffled": 2, "unfold": 0, "operator": 1, "slices": 2}
    if column.name in ("state", "mode"):
        return column.map(order)
    return column


if __name__ == "__main__":
    raise SystemExit(main())
