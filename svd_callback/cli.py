"""The svd-callback command line: analyze, compare and demo.

Exit status: 0 success; 1 the output was printed but a warning on stderr says what is missing or
suspect in it (``compare`` with runs of different lengths, a truncated event file, a metric some
run lacks); 2 an error the user can fix (bad argument, missing file, corrupt or mismatched
checkpoint, nothing to analyse or compare), reported as one line on stderr without traceback;
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from svd_callback import cli_args
from svd_callback.cli_args import OneLineParser, warn
from svd_callback.config import CONV_MODES, SVD_METHODS

MAX_SPATIAL_DIMS = 3
"""Conv1d to Conv3d: ``--input-size`` takes one to three numbers."""


class UsageError(Exception):
    """An error reported as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a one-line usage error already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from svd_callback.loading import ModelLoadError
    from svd_callback.runs import RunReadError

    try:
        return int(args.func(args) or 0)
    except (UsageError, ModelLoadError, RunReadError, OSError) as error:
        print(f"svd-callback {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svd-callback {args.command}: interrupted", file=sys.stderr)
        return 130


def one_line(error: BaseException) -> str:
    """The error's message with its line breaks and indentation folded into single spaces."""
    return " ".join(str(error).split()) or type(error).__name__


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="svd-callback", description=__doc__.splitlines()[0],
        epilog="Exit status: 0 success; 1 output written with a warning on stderr; 2 an error "
               "you can fix, one line on stderr. 'svd-callback COMMAND --help' for a command.")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)

    a = sub.add_parser(
        "analyze", help="analyse a model or checkpoint and print a per-layer table",
        description="Decompose every conv and linear layer of a model (a torchvision model by "
                    "name, a Lightning checkpoint, a saved nn.Module or a state dict) and print "
                    "one row per layer and conv mode: norms, the power-law fit, the quality "
                    "label.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("model", help="torchvision model name, Lightning .ckpt, saved nn.Module or "
                                 "state dict")
    a.add_argument("--mode", nargs="+", default=["unfold"], choices=CONV_MODES,
                   help="conv mode(s)")
    a.add_argument("--input-size", type=cli_args.input_side, nargs="+", default=None,
                   help="spatial input size of the model (operator mode): 1 to 3 numbers, "
                        f"each 1 to {cli_args.MAX_INPUT_SIDE}")
    a.add_argument("--num-classes", type=cli_args.positive_int, default=None,
                   help="for torchvision models")
    a.add_argument("--model-class", default=None,
                   help="package.module:Class of the LightningModule behind a checkpoint")
    a.add_argument("--unsafe-load", action="store_true",
                   help="unpickle the file in full (torch.load weights_only=False): this runs "
                        "any code hidden in the file; only for files from a source you trust "
                        "(default: a safe load of tensors, plain values and torch.nn layers)")
    a.add_argument("--ww-compat", action="store_true", help="reproduce WeightWatcher 0.7.7")
    a.add_argument("--svd-method", choices=SVD_METHODS, default="auto",
                   help="auto: float32 Gram with --ww-compat, float64 Gram otherwise")
    a.add_argument("--mp-fit", action="store_true", help="fit the Marchenko-Pastur bulk")
    a.add_argument("--traps", action="store_true", help="correlation traps (shuffled weights)")
    a.add_argument("--embeddings", action="store_true",
                   help="also analyse nn.Embedding tables (a tied table once)")
    a.add_argument("--device", type=cli_args.device, default=None,
                   help="analyse on this device (default: cpu)")
    a.add_argument("--csv", type=cli_args.output_file, default=None,
                   help="write the table as CSV")
    a.add_argument("--json", type=cli_args.output_file, default=None,
                   help="write the table as JSON records")
    a.add_argument("--figures", type=cli_args.output_dir, default=None,
                   help="write ESD figures to this folder")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.set_defaults(func=_cmd_analyze)

    c = sub.add_parser(
        "compare", help="compare the spectral trajectories of several runs",
        description="Read the history files (or TensorBoard events) of finished runs and print "
                    "each summary metric's trajectory side by side, with plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("runs", nargs="+", type=Path, help="run log directories")
    c.add_argument("--metric", nargs="+", default=None,
                   help="summary metrics to compare (default: alpha_mean, alpha_weighted_mean, "
                        "stable_rank_mean, log_spectral_norm_mean)")
    c.add_argument("--mode", default=None, choices=CONV_MODES,
                   help="conv mode (default: each run's primary mode)")
    c.add_argument("--out", type=cli_args.output_dir, default=Path("comparison"),
                   help="folder for comparison plots")
    c.add_argument("--no-plots", action="store_true", help="print the table only")
    c.set_defaults(func=_cmd_compare)

    d = sub.add_parser(
        "demo", help="train a small CNN on digits with the callback",
        description="Train the example SmallCNN on scikit-learn's bundled 8x8 digits with "
                    "SpectralMonitor attached (nothing is downloaded), write TensorBoard logs "
                    "under OUT/demo and print a per-layer table and the alerts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--epochs", type=cli_args.positive_int, default=8,
                   help="training epochs")
    d.add_argument("--out", type=cli_args.output_dir, default=Path("runs"),
                   help="TensorBoard log root")
    d.add_argument("--seed", type=cli_args.seed, default=0,
                   help="seed of the weights, the data split and the batches")
    d.add_argument("--mode", nargs="+", default=["unfold"], choices=CONV_MODES,
                   help="conv mode(s); the first is the primary mode")
    d.set_defaults(func=_cmd_demo)
    return parser


def _cmd_analyze(args: argparse.Namespace) -> int:
    from svd_callback.analysis import analyze
    from svd_callback.config import AnalysisConfig
    from svd_callback.loading import load_model
    from svd_callback.table import format_table

    if args.input_size and len(args.input_size) > MAX_SPATIAL_DIMS:
        raise UsageError(f"--input-size takes 1 to {MAX_SPATIAL_DIMS} numbers (the spatial size), "
                         f"got {len(args.input_size)}")
    model, note = load_model(args.model, model_class=args.model_class,
                             num_classes=args.num_classes, trust_pickle=args.unsafe_load)
    if note:
        print(f"note: {note}")
    if args.device:
        model = model.to(args.device)
    sized = _modes_needing_input_size(args.mode)
    input_sizes = _input_sizes(model, args, note, sized[0]) if sized else None
    progress = None if args.no_progress else _progress_bar()
    groups = ("norms", "powerlaw") + ("mp",) * args.mp_fit + ("traps",) * args.traps
    config = AnalysisConfig(conv_mode=tuple(args.mode), metrics=groups,
                            ww_compat=args.ww_compat, svd_method=args.svd_method,
                            embeddings=args.embeddings)
    report = analyze(model, config=config, input_sizes=input_sizes, progress=progress)
    if progress is not None:
        progress.close()
    frame = report.to_dataframe()
    if frame.empty:
        raise UsageError(f"{args.model} has no conv or linear layer")
    for mode in sized if args.input_size else ():
        _check_sized_convs(report.by_mode(mode), mode, args.input_size)
    print(format_table(frame))
    if report.looks_untrained():
        ratios = report.stable_rank_ratios()
        print(f"  every layer's spectrum is that of random weights: stable rank >= 0.8 x a "
              f"random matrix's of its shape in all {len(ratios)} layers (lowest "
              f"{min(ratios.values()):.2f}): the weights look untrained")
    for line in [*report.nan_reasons("alpha"), *report.quality_reasons()]:
        print(f"  {line}")
    for record in report:  # the table cuts long reasons short
        if record.reason:
            print(f"  {record.name} [{record.mode}] skipped: {record.reason}")
    if not report.analysed():
        raise UsageError(f"no layer of {args.model} could be analysed (reasons above)")
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if args.json:
        frame.to_json(args.json, orient="records", indent=1)
        print(f"wrote {args.json}")
    if args.figures:
        import matplotlib.pyplot as plt

        from svd_callback.sinks.figures import esd_figure_for
        from svd_callback.sinks.tags import short_conventions

        args.figures.mkdir(parents=True, exist_ok=True)
        for record in report.analysed():
            fig = esd_figure_for(record, short_conventions(
                record.mode, record.normalization, config.fit))
            fig.savefig(args.figures / f"esd_{record.mode}_{record.name}.png", dpi=150)
            plt.close(fig)
        print(f"wrote figures to {args.figures}")
    return 0


def _modes_needing_input_size(modes: Sequence[str]) -> list[str]:
    """The modes of ``--mode`` that need each conv's input size (``operator``)."""
    from svd_callback.spectra.modes import MODES

    return [m for m in modes if MODES[m].needs_input_size]


def _input_sizes(model, args: argparse.Namespace, note: str | None,
                 mode: str) -> dict[str, tuple[int, ...]] | None:
    """Each conv's spatial input size from one probe pass (``--input-size`` or the model's
    ``example_input_array``), for ``mode``; a model that rejects the probe is a usage error."""
    from svd_callback.layers import example_input_for, record_input_sizes

    if note is not None:  # weights only: no forward pass to learn the convs' input sizes from
        raise UsageError(f"{mode} mode needs the model's forward pass and {args.model} holds "
                         f"weights only: pass --model-class, or leave {mode} out of --mode")
    example = None if args.input_size else getattr(model, "example_input_array", None)
    if not args.input_size and example is None:
        raise UsageError(f"{mode} mode needs --input-size (the model's spatial input size)")
    what = ("--input-size " + " ".join(map(str, args.input_size)) if args.input_size
            else "the model's example_input_array")
    try:
        probe = example if example is not None else example_input_for(model, args.input_size)
        return record_input_sizes(model, probe)
    except Exception as error:  # the model's own forward rejects the probe input
        raise UsageError(f"{mode} mode: the model rejects a probe input of {what}: "
                         f"{type(error).__name__}: {one_line(error)}") from None


def _check_sized_convs(records, mode: str, input_size: Sequence[int]) -> None:
    """No conv analysed in ``mode`` because of the input size: a usage error."""
    from svd_callback.report import INPUT_SIZE_CODES

    convs = [r for r in records if r.kind != "linear"]
    by_size = [r for r in convs if r.reason_code in INPUT_SIZE_CODES]
    if convs and all(r.reason for r in convs) and by_size:
        first = by_size[0]
        raise UsageError(f"--input-size {' '.join(map(str, input_size))}: none of the "
                         f"{len(convs)} conv layers can be analysed in {mode} mode "
                         f"({first.name}: {first.reason})")


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


DEFAULT_COMPARE = ["alpha_mean", "alpha_weighted_mean", "stable_rank_mean",
                   "log_spectral_norm_mean"]


def _cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from svd_callback.runs import distinct_names, read_run

    runs = [read_run(path) for path in args.runs]
    names = distinct_names([run.path for run in runs])
    by_name = dict(zip(names, runs, strict=True))
    metrics = args.metric or DEFAULT_COMPARE
    logged = {name: set(run.summary_metrics(args.mode)) for name, run in by_name.items()}
    if not any(all(metric in have for have in logged.values()) for metric in metrics):
        which = "the run" if len(runs) == 1 else "every run"
        raise UsageError(f"none of {', '.join(metrics)} is logged{_mode_text(args.mode)} by "
                         f"{which}; " + "; ".join(_what_run_has(name, by_name[name], args.mode)
                                                  for name in names))
    warnings = [problem for run in runs for problem in run.problems]
    for metric in metrics:
        columns = {name: run.series(metric, mode=args.mode) for name, run in by_name.items()}
        lacking = [name for name, column in columns.items() if column.empty]
        columns = {k: v for k, v in columns.items() if not v.empty}
        if not columns:
            print(f"{metric}: not logged by any run")
            if args.metric:
                warnings.append(f"{metric} is not logged by any run{_mode_text(args.mode)}")
            continue
        if lacking:
            warnings.append(f"{metric} is not logged{_mode_text(args.mode)} by "
                            + ", ".join(lacking))
        table = pd.DataFrame(columns)
        table.index.name = "epoch"
        print(f"\n{metric}")
        print(table.to_string(float_format=lambda v: f"{v:.4g}", na_rep="-"))
        if not args.no_plots:
            path = _plot(table, metric, args.out, by_name, args.mode)
            print(f"plot: {path}")
    warnings.extend(_short_runs(by_name, args.mode))
    print("\nalerts")
    for name, run in by_name.items():
        if not run.alerts:
            print(f"  {name}: none")
        for alert in run.alerts:
            print(f"  {name}: {alert.get('message') or alert}")
    for text in warnings:
        warn(args.command, text)
    return 1 if warnings else 0


def _mode_text(mode: str | None) -> str:
    return f" in mode {mode}" if mode else ""


def _what_run_has(name: str, run, mode: str | None) -> str:
    have = run.summary_metrics(mode)
    modes = ", ".join(run.modes())
    if not have:
        return f"{name} has no summary metric{_mode_text(mode)} (its modes: {modes})"
    return f"{name} has {', '.join(have)} (modes: {modes})"


def _short_runs(runs: dict, mode: str | None) -> list[str]:
    """One warning naming the runs whose last analysed epoch comes before the longest run's."""
    last = {name: run.last_epoch(mode) for name, run in runs.items()}
    known = [epoch for epoch in last.values() if epoch is not None]
    if len(runs) < 2 or not known:
        return []
    longest = max(known)
    short = {name: epoch for name, epoch in last.items() if epoch is None or epoch < longest}
    if not short:
        return []
    listed = ", ".join(f"{name} (last epoch {'?' if epoch is None else epoch})"
                       for name, epoch in short.items())
    return [f"runs of different length: {listed}; the longest reaches epoch {longest}"]


def _plot(table, metric: str, out: Path, runs: dict, mode: str | None) -> Path:
    """:func:`comparison_figure` saved as ``<out>/<metric>.png`` (1000 x 500 px)."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig = comparison_figure(table, metric, runs, mode)
    path = out / f"{metric}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def comparison_figure(table, metric: str, runs: dict, mode: str | None):
    """One line per run (columns of ``table``, indexed by epoch), labelled with its conv mode;
    a red cross where the run raised alerts; integer epoch ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(10, 5))
    marked = False
    for column in table.columns:
        series = table[column].dropna()
        run = runs[column]
        ax.plot(series.index, series.values, marker="o",
                label=f"{column} (mode {mode or run.primary_mode or 'primary'})")
        alerts = [e for e in run.alert_epochs() if e in series.index]
        if alerts:
            ax.scatter(alerts, series.loc[alerts].values, marker="X", s=120, color="red",
                       zorder=3, label=None if marked else "alert raised at this epoch")
            marked = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epochs trained (0 = initial weights)", fontsize=12)
    ax.set_ylabel(metric, fontsize=12)
    which = f"conv mode {mode}" if mode else "each run's primary conv mode"
    ax.set_title(f"{metric} ({which})", fontsize=13)
    ax.tick_params(labelsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=11)
    fig.tight_layout()
    return fig


def _cmd_demo(args: argparse.Namespace) -> int:
    from svd_callback.demo import run_demo

    run_demo(epochs=args.epochs, root=args.out, seed=args.seed, conv_modes=tuple(args.mode))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
