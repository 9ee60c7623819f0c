"""The tables of experiments/factorization_rank/RESULTS.md, rebuilt from its derived data alone.

    .venv/bin/python -m experiments.factorization_rank.tables   (seconds; no model, no CP fit)
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.factorization_rank.tables")

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from experiments.common import fmt, markdown_table
from experiments.derived import group_by, read_json, read_rows, rebuild_tables
from experiments.seed_stats import spread

HERE = Path(__file__).resolve().parent
STATES = ("init", "epoch 6", "epoch 12", "random labels", "tiny lr")
VARIANTS = ("activations", "permuted", "channel-permuted")
MAX_RANK = 6


def _seed_means(rows: list[dict], key: str) -> dict[tuple, float]:
    """(seed, state, layer, variant) -> mean of ``key`` over the rank seeds."""
    return {k: statistics.fmean(float(r[key]) for r in v)
            for k, v in group_by(rows, "seed", "state", "layer", "variant").items()}


def _per_seed(means: dict[tuple, float], state: str, layer: str, variant: str,
              seeds: Sequence[int]) -> list[float]:
    return [means[(s, state, layer, variant)] for s in seeds]


def _cell(values: Sequence[float]) -> str:
    s = spread(values)
    return f"{fmt(s.mean)} [{fmt(s.ci_low)}, {fmt(s.ci_high)}]"


def _every(values: Sequence[float], sign: int) -> bool:
    return bool(values) and all(math.isfinite(v) and sign * v > 0 for v in values)


def runs_block(meta: dict) -> str:
    rows = [[r["kind"], r["seed"], f"{100 * r['test_acc']['6']:.2f}",
             f"{100 * r['test_acc']['12']:.2f}", f"{r['train_seconds']:.0f}"]
            for r in sorted(meta["runs"], key=lambda r: (r["kind"], r["seed"]))]
    s = meta["settings"]
    machines = sorted({r["machine"] for r in meta["runs"]})
    return "\n".join([
        f"Command: `{meta['command']}`; rebuilt by `.venv/bin/python -m "
        "experiments.factorization_rank.tables` from `derived/`.",
        "",
        markdown_table(["recipe", "seed", "test acc % epoch 6", "test acc % epoch 12",
                        "training s"], rows),
        "",
        f"`factorization_rank(max_rank={s['max_rank']}, threshold={s['threshold']:g}, "
        f"n_starts={s['n_starts']})` on {s['probe_size']}-image stratified test probes (rank "
        f"seeds {', '.join(map(str, s['rank_seeds']))}), tensors bounded to 64 images x C x 16 "
        f"positions. Wall time of the factorization run: {meta['wall_seconds']:.0f} s. "
        "Training machine: " + " / ".join(machines) + ".",
    ])


def fit_block(rows: list[dict]) -> str:
    """Fit at F = 1 per state, beside the permutation controls, and the verdicts."""
    seeds = sorted({r["seed"] for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fit1 = _seed_means(rows, "fit1")
    zeros = _seed_means(rows, "zero_bounded")
    zeros_raw = _seed_means(rows, "zero_raw")
    table: list[list] = []
    lines: list[str] = []
    for layer in layers:
        for state in STATES:
            values = {v: _per_seed(fit1, state, layer, v, seeds) for v in VARIANTS}
            excess = [a - p for a, p in zip(values["activations"], values["permuted"],
                                            strict=True)]
            excess_c = [a - p for a, p in zip(values["activations"], values["channel-permuted"],
                                              strict=True)]
            table.append([layer, state, _cell(_per_seed(zeros_raw, state, layer, "activations",
                                                        seeds)),
                          _cell(_per_seed(zeros, state, layer, "activations", seeds)),
                          *(_cell(values[v]) for v in VARIANTS), _cell(excess),
                          _cell(excess_c)])

        def per(state: str, variant: str, layer: str = layer) -> list[float]:
            return _per_seed(fit1, state, layer, variant, seeds)

        def excess_of(state: str, control: str, layer: str = layer) -> list[float]:
            return [a - p for a, p in zip(per(state, "activations"), per(state, control),
                                          strict=True)]

        drop = [t - i for t, i in zip(per("epoch 12", "activations"), per("init", "activations"),
                                      strict=True)]
        excess_change = {c: [t - i for t, i in zip(excess_of("epoch 12", c),
                                                     excess_of("init", c), strict=True)]
                         for c in ("permuted", "channel-permuted")}
        separates = {}
        for poor in ("random labels", "tiny lr"):
            separates[poor] = (
                _every([w - p for w, p in zip(per("epoch 12", "activations"),
                                              per(poor, "activations"), strict=True)], -1),
                [w - p for w, p in zip(excess_of("epoch 12", "permuted"),
                                       excess_of(poor, "permuted"), strict=True)],
            )
        good_better = [b - g for b, g in zip(per("epoch 12", "activations"),
                                             per("epoch 6", "activations"), strict=True)]

        def listed(values: Sequence[float]) -> str:
            return ", ".join(fmt(v, 2) for v in values)

        def falls(values: Sequence[float]) -> str:
            return "falls in 3/3 seeds" if _every(values, -1) else "not in 3/3 seeds"

        poor_text = "; ".join(
            f"vs {poor}: fit1 **{'separates' if ok else 'does not separate'}**, excess "
            f"difference {listed(diff)}" for poor, (ok, diff) in separates.items())
        lines.append(
            f"- **{layer}.** Claim 1 (fit1 falls with training): epoch 12 - init = "
            f"{listed(drop)}: **{'yes' if _every(drop, -1) else 'no'}** (3/3 seeds below). "
            "Claim 2 (not explained by sparsity): change of the excess init -> epoch 12 over "
            f"the permuted control {listed(excess_change['permuted'])} "
            f"(**{falls(excess_change['permuted'])}**), over the channel-permuted control "
            f"{listed(excess_change['channel-permuted'])} "
            f"(**{falls(excess_change['channel-permuted'])}**). Claim 3 (healthy epoch 12 "
            f"below the poorly trained nets): {poor_text}. Good vs better (epoch 12 - epoch 6): "
            f"{listed(good_better)}.")
    header = ["layer", "state", "zeros (raw)", "zeros (X)", "fit1 X", "fit1 permuted",
              "fit1 channel-permuted", "excess over permuted", "excess over channel-permuted"]
    return "\n".join([
        "Fit at F = 1 (1 - ||X - Xhat|| / ||X||; lower = one non-negative component explains "
        "less), mean over the rank seeds per training seed; cells: mean over the 3 training "
        "seeds [exact bootstrap 95% interval over seeds, here the range]. `zeros`: fraction of "
        "exact zeros of the raw activations and of the bounded tensor X. `excess` = fit1(X) - "
        "fit1(control).",
        "",
        markdown_table(header, table),
        "",
        *lines,
    ])


def rank_block(rows: list[dict]) -> str:
    """Median chosen rank per state, at the two CORCONDIA thresholds."""
    seeds = sorted({r["seed"] for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    table, lines = [], []
    grouped = group_by([r for r in rows if r["variant"] == "activations"], "seed", "state",
                       "layer")

    def median_rank(seed: int, state: str, layer: str, key: str) -> float:
        ranks = [r[key] for r in grouped[(seed, state, layer)] if r[key] is not None]
        return float(statistics.median(ranks)) if ranks else math.nan

    for layer in layers:
        for key, label in (("rank", "80"), ("rank_at_50", "50")):
            table.append([layer, label, *(", ".join(fmt(median_rank(s, st, layer, key))
                                                    for s in seeds) for st in STATES)])
        good = [median_rank(s, "epoch 12", layer, "rank") for s in seeds]
        direction = all(
            all(g != median_rank(s, poor, layer, "rank") for s, g in zip(seeds, good,
                                                                          strict=True))
            for poor in ("random labels", "tiny lr"))
        answer = "yes" if direction else "no"
        lines.append(f"- {layer}, CORCONDIA >= 80: a direction (healthy final rank differs from "
                     f"both poorly trained nets' in 3/3 seeds): **{answer}**.")
    return "\n".join([
        "Median chosen rank over the rank seeds, one value per training seed (None-free "
        "medians; max_rank 6).",
        "",
        markdown_table(["layer", "CORCONDIA threshold", *STATES], table),
        "",
        *lines,
    ])


def curve_block(rows: list[dict]) -> str:
    """Mean fit and CORCONDIA per F, over training and rank seeds."""
    table = []
    for (layer, state, variant), group in group_by(rows, "layer", "state", "variant").items():
        fits = [statistics.fmean(float(r[f"fit{f}"]) for r in group)
                for f in range(1, MAX_RANK + 1)]
        cc = [statistics.median(float(r[f"corcondia{f}"]) for r in group)
              for f in range(1, MAX_RANK + 1)]
        table.append([layer, state, variant, " ".join(f"{v:.3f}" for v in fits),
                      " ".join(f"{v:.0f}" for v in cc)])
    return "\n".join([
        "Mean fit and median CORCONDIA per F = 1..6 over the 3 training x 3 rank seeds.",
        "",
        markdown_table(["layer", "state", "tensor", "mean fit F=1..6", "median CORCONDIA F=1..6"],
                       table),
    ])


def bn_block(rows: list[dict], check: list[dict]) -> str:
    """Post-hoc: fit1 of the initial weights with BatchNorm statistics estimated on data."""
    seeds = sorted({r["seed"] for r in rows})
    fit1 = _seed_means(rows + check, "fit1")
    zeros = _seed_means(rows + check, "zero_raw")
    state = check[0]["state"]
    table = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        for label, name in (("init (default BN statistics)", "init"), (state, state),
                            ("epoch 12", "epoch 12"), ("tiny lr", "tiny lr")):
            table.append([layer, label,
                          _cell(_per_seed(zeros, name, layer, "activations", seeds)),
                          _cell(_per_seed(fit1, name, layer, "activations", seeds)),
                          _cell(_per_seed(fit1, name, layer, "permuted", seeds))])
    return "\n".join([
        "Post-hoc check (`experiments.factorization_rank.bn_check`, not in the protocol): the "
        "initial weights with every BatchNorm's running mean and variance estimated on 40 "
        "training batches, no weight changed. Cells as above.",
        "",
        markdown_table(["layer", "network", "zeros (raw)", "fit1 X", "fit1 permuted"], table),
    ])


def build(derived: Path = HERE / "derived") -> dict[str, str]:
    meta = read_json(derived / "meta.json")
    rows = read_rows(derived / "factorizations.csv")
    blocks = {"runs": runs_block(meta), "fit": fit_block(rows), "rank": rank_block(rows),
              "curves": curve_block(rows)}
    if (derived / "bn_check.csv").exists():
        blocks["BN check"] = bn_block(rows, read_rows(derived / "bn_check.csv"))
    return blocks


def main(argv: Sequence[str] | None = None) -> int:
    return rebuild_tables(build, HERE, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
