"""The ``svd-callback`` command line: ``analyze``, ``compare`` and ``demo``.

Errors the user can fix (a missing file, a corrupt checkpoint, a run without spectral tags) print
one line on stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

SVD_METHOD_CHOICES = ("auto", "svd", "gram", "gram32")
"""``svd_callback.spectra.SVD_METHODS``, spelled out so ``--help`` does not import torch."""

TABLE_COLUMNS = ["layer", "kind", "mode", "shape", "spectral_norm", "stable_rank", "alpha",
                 "alpha_sigma", "D", "alpha_weighted", "quality", "reason"]


class UsageError(Exception):
    """An error reported as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from svd_callback.loading import ModelLoadError
    from svd_callback.runs import RunReadError

    try:
        return int(args.func(args) or 0)
    except (UsageError, ModelLoadError, RunReadError, FileNotFoundError) as error:
        print(f"svd-callback {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svd-callback {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svd-callback", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    a = sub.add_parser("analyze", help="analyse a model or checkpoint and print a per-layer table")
    a.add_argument("model", help="torchvision model name, Lightning .ckpt, saved nn.Module or "
                                 "state dict")
    a.add_argument("--mode", nargs="+", default=["unfold"],
                   choices=["unfold", "operator", "slices"], help="conv mode(s)")
    a.add_argument("--input-size", type=int, nargs="+", default=None,
                   help="spatial input size of the model (operator mode)")
    a.add_argument("--num-classes", type=int, default=None, help="for torchvision models")
    a.add_argument("--model-class", default=None,
                   help="package.module:Class of the LightningModule behind a checkpoint")
    a.add_argument("--ww-compat", action="store_true", help="reproduce WeightWatcher 0.7.7")
    a.add_argument("--svd-method", choices=SVD_METHOD_CHOICES, default="auto",
                   help="auto: float32 Gram with --ww-compat, float64 Gram otherwise")
    a.add_argument("--mp-fit", action="store_true", help="fit the Marchenko-Pastur bulk")
    a.add_argument("--traps", action="store_true", help="correlation traps (shuffled weights)")
    a.add_argument("--device", default=None, help="analyse on this device (default: cpu)")
    a.add_argument("--csv", type=Path, default=None, help="write the table as CSV")
    a.add_argument("--json", type=Path, default=None, help="write the table as JSON records")
    a.add_argument("--figures", type=Path, default=None, help="write ESD figures to this folder")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.set_defaults(func=_cmd_analyze)

    c = sub.add_parser("compare", help="compare the spectral trajectories of several runs")
    c.add_argument("runs", nargs="+", type=Path, help="run log directories")
    c.add_argument("--metric", nargs="+", default=None,
                   help="summary metrics to compare (default: alpha_mean, alpha_weighted_mean, "
                        "stable_rank_mean, log_spectral_norm_mean)")
    c.add_argument("--mode", default=None, help="conv mode (default: the runs' primary mode)")
    c.add_argument("--out", type=Path, default=Path("comparison"),
                   help="folder for comparison plots")
    c.add_argument("--no-plots", action="store_true")
    c.set_defaults(func=_cmd_compare)

    d = sub.add_parser("demo", help="train a small CNN on digits with the callback")
    d.add_argument("--epochs", type=int, default=8)
    d.add_argument("--out", type=Path, default=Path("runs"), help="TensorBoard log root")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--mode", nargs="+", default=["unfold"],
                   choices=["unfold", "operator", "slices"])
    d.set_defaults(func=_cmd_demo)
    return parser


def _cmd_analyze(args: argparse.Namespace) -> int:
    from svd_callback.analysis import analyze
    from svd_callback.loading import load_model

    model, note = load_model(args.model, model_class=args.model_class,
                             num_classes=args.num_classes)
    if note:
        print(f"note: {note}")
    if args.device:
        model = model.to(args.device)
    input_size = tuple(args.input_size) if args.input_size else None
    example = getattr(model, "example_input_array", None) if input_size is None else None
    if "operator" in args.mode and input_size is None and example is None and note is None:
        raise UsageError("operator mode needs --input-size (the model's spatial input size)")
    progress = None if args.no_progress else _progress_bar()
    report = analyze(model, args.mode, input_size=input_size, example_input=example,
                     ww_compat=args.ww_compat, svd_method=args.svd_method,
                     mp_fit=args.mp_fit, traps=args.traps,
                     progress=progress)
    if progress is not None:
        progress.close()
    frame = report.to_dataframe()
    if frame.empty:
        raise UsageError(f"{args.model} has no conv or linear layer")
    print(format_table(frame))
    for line in report.nan_reasons("alpha"):
        print(f"  {line}")
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if args.json:
        frame.to_json(args.json, orient="records", indent=1)
        print(f"wrote {args.json}")
    if args.figures:
        import matplotlib.pyplot as plt

        from svd_callback.sinks.figures import esd_figure

        args.figures.mkdir(parents=True, exist_ok=True)
        for record in report.analysed():
            fig = esd_figure(record)
            fig.savefig(args.figures / f"esd_{record.mode}_{record.name}.png", dpi=90)
            plt.close(fig)
        print(f"wrote figures to {args.figures}")
    return 0


def _progress_bar():
    from tqdm import tqdm

    class _Bar:
        def __init__(self) -> None:
            self.bar = None

        def __call__(self, done: int, total: int) -> None:
            if self.bar is None:
                self.bar = tqdm(total=total, unit="layer", leave=False, file=sys.stderr)
            self.bar.n = done
            self.bar.refresh()

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()

    return _Bar()


def format_table(frame, columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A compact fixed-width table of the report's most useful columns."""
    shown = [c for c in columns if c in frame.columns]
    return frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}",
                                  na_rep="nan", max_colwidth=60)


DEFAULT_COMPARE = ["alpha_mean", "alpha_weighted_mean", "stable_rank_mean",
                   "log_spectral_norm_mean"]


def _cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from svd_callback.runs import read_run

    runs = [read_run(path) for path in args.runs]
    names = _unique_names([run.name for run in runs])
    metrics = args.metric or DEFAULT_COMPARE
    found_any = False
    for metric in metrics:
        columns = {name: run.series(metric, mode=args.mode) for name, run in zip(names, runs,
                                                                                 strict=True)}
        columns = {k: v for k, v in columns.items() if not v.empty}
        if not columns:
            print(f"{metric}: not logged by any run")
            continue
        found_any = True
        table = pd.DataFrame(columns)
        table.index.name = "epoch"
        print(f"\n{metric}")
        print(table.to_string(float_format=lambda v: f"{v:.4g}", na_rep="-"))
        if not args.no_plots:
            path = _plot(table, metric, args.out)
            print(f"plot: {path}")
    if not found_any:
        raise UsageError("none of the metrics " + ", ".join(metrics) + " was found in the runs")
    print("\nalerts")
    for name, run in zip(names, runs, strict=True):
        if not run.alerts:
            print(f"  {name}: none")
        for alert in run.alerts:
            print(f"  {name}: {alert.get('message') or alert}")
    return 0


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _plot(table, metric: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for column in table.columns:
        series = table[column].dropna()
        ax.plot(series.index, series.values, marker="o", label=column)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / f"{metric}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cmd_demo(args: argparse.Namespace) -> int:
    from svd_callback.demo import run_demo

    run_demo(epochs=args.epochs, root=args.out, seed=args.seed, conv_modes=tuple(args.mode))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
