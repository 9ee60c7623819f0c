"""The tables of experiments/tempbalance/RESULTS.md, rebuilt from ``derived/runs.json`` alone.

    .venv/bin/python -m experiments.tempbalance.tables   (seconds; no training)
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.tempbalance.tables")

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.common import markdown_table
from experiments.derived import read_json, rebuild_tables
from experiments.seed_stats import spread

HERE = Path(__file__).resolve().parent
ARMS = ("baseline", "tempbalance", "global_m", "global_hi")
SPLIT = {"digits": "validation", "resnet": "test"}
COMPARISONS = (("tempbalance", "baseline"), ("tempbalance", "global_m"),
               ("global_m", "baseline"), ("global_hi", "baseline"))


def mean_factor(row: dict[str, Any]) -> float:
    """m_s of a tempbalance run (as in ``run.mean_factor``)."""
    tuned = row["checks"]["tuned"]
    return statistics.fmean(e["factors"][n] for e in row["factor_epochs"] for n in tuned)


def decision(diffs: Sequence[float]) -> str:
    """Addendum's rule: higher / lower only when every seed agrees."""
    if diffs and all(d > 0 for d in diffs):
        return "higher"
    if diffs and all(d < 0 for d in diffs):
        return "lower"
    return "no evidence either way"


def _points(values: Sequence[float]) -> str:
    return ", ".join(f"{100 * v:+.2f}" for v in values)


def pair_block(pair: str, rows: list[dict[str, Any]]) -> str:
    by = {(r["arm"], r["seed"]): r for r in rows if r["pair"] == pair}
    seeds = sorted({s for _, s in by})
    split = SPLIT[pair]
    summary = []
    for arm in ARMS:
        finals = [by[arm, s]["final_acc"] for s in seeds]
        best = [by[arm, s]["best_acc"] for s in seeds]
        f, b = spread(finals), spread(best)
        factors = [by[arm, s]["lr_factor"] for s in seeds]
        summary.append([arm, f"{min(factors):.3f}-{max(factors):.3f}",
                        f"{100 * f.mean:.2f} [{100 * f.ci_low:.2f}, {100 * f.ci_high:.2f}]",
                        f"{100 * b.mean:.2f} [{100 * b.ci_low:.2f}, {100 * b.ci_high:.2f}]"])
    per_seed = [[s, f"{mean_factor(by['tempbalance', s]):.4f}",
                 *(f"{100 * by[arm, s]['final_acc']:.2f}" for arm in ARMS)] for s in seeds]
    comparisons, decided = [], {}
    for a, b in COMPARISONS:
        diffs = [by[a, s]["final_acc"] - by[b, s]["final_acc"] for s in seeds]
        d = spread(diffs)
        decided[(a, b)] = (decision(diffs), d.mean)
        comparisons.append([f"{a} - {b}", _points(diffs), f"{100 * d.mean:+.2f}",
                            f"[{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}]",
                            f"{sum(x > 0 for x in diffs)}/{len(diffs)}", decision(diffs)])
    tb, control = decided[("tempbalance", "baseline")], decided[("global_m", "baseline")]
    versus = decided[("tempbalance", "global_m")]
    conclusion = (
        f"**Against the control:** tempbalance - baseline {100 * tb[1]:+.2f} points "
        f"({tb[0]}); the plain learning-rate change to m_s gives global_m - baseline "
        f"{100 * control[1]:+.2f} ({control[0]}); tempbalance - global_m {100 * versus[1]:+.2f} "
        f"({versus[0]}). The balancing itself, beyond the global rate it implies, is "
        + ("**higher** on every seed." if versus[0] == "higher" else
           "**lower** on every seed." if versus[0] == "lower" else
           "**not distinguishable** from the control on these seeds.")
    )
    layers = by["tempbalance", seeds[0]]["checks"]["tuned"]
    factor_table = [[s, *(f"{by['tempbalance', s]['factors'][n]:.3f}" for n in layers)]
                    for s in seeds]
    lines = [
        f"### {pair}",
        "",
        f"Final and best {split} accuracy in %, mean over seeds [exact bootstrap 95% interval "
        "over seeds]; `lr factor`: the base rate of every parameter relative to the recipe "
        "(tempbalance: 1, its tuned layers scaled by the balancer).",
        "",
        markdown_table(["arm", "lr factor (range over seeds)", f"final {split} acc %",
                        f"best {split} acc %"], summary),
        "",
        f"Per seed: m_s (mean factor of the tempbalance run over epochs and tuned layers) and "
        f"the final {split} accuracy in % of each arm:",
        "",
        markdown_table(["seed", "m_s", *ARMS], per_seed),
        "",
        "Paired differences of the final accuracy (points; decision: higher / lower only when "
        "every seed agrees):",
        "",
        markdown_table(["comparison", "per seed", "mean", "bootstrap 95%", "positive",
                        "decision"], comparisons),
        "",
        conclusion,
        "",
        "Factors at the last epoch start (rate / scheduled rate), tuned layers:",
        "",
        markdown_table(["seed", *layers], factor_table),
        "",
        *cost_lines(pair, by, seeds),
        *check_lines(by, seeds),
    ]
    return "\n".join(lines)


def cost_lines(pair: str, by: dict, seeds: Sequence[int]) -> list[str]:
    """Training time per epoch of the balanced arm against the unbalanced arms run in the same
    invocation (validation excluded; minimum over epochs, the least disturbed reading)."""
    table = []
    for s in seeds:
        tb = by["tempbalance", s]
        reference = [by[a, s] for a in ("baseline", "global_m", "global_hi")
                     if by[a, s].get("train_epoch_seconds")]
        base_min = min(min(r["train_epoch_seconds"]) for r in reference)
        tb_min = min(tb["train_epoch_seconds"])
        refit = statistics.median(tb["refit_seconds"])
        table.append([s, f"{base_min:.3f}", f"{tb_min:.3f}", f"{tb_min / base_min:.3f}",
                      f"{1000 * refit:.1f}", f"{100 * refit / tb_min:.2f}"])
    return ["Cost: minimum training time per epoch (validation excluded) of the unbalanced arms "
            "trained in the same invocation (" + ("baseline, global_m, global_hi" if
                                                  pair == "digits" else "global_m, global_hi;"
                                                  " the baseline came from the cache")
            + ") and of the balanced arm; one CPU thread on a shared machine (the ratio measures "
            "the machine too; the refit time is the direct measurement):", "",
            markdown_table(["seed", "unbalanced s (min)", "tempbalance s (min)", "ratio",
                            "refit ms (median)", "refit % of epoch"], table), ""]


def check_lines(by: dict, seeds: Sequence[int]) -> list[str]:
    """What the balancer did to the rates (tempbalance, first seed), and the controls' rates."""
    checks = by["tempbalance", seeds[0]]["checks"]
    untuned = "; ".join(f"`{k}` ({v})" for k, v in checks["untuned"].items())
    norms = ", ".join(f"`{k}` -> `{v}`" for k, v in checks["norm_of"].items()) or "none"
    table = [[e["epoch"], f"{e['scheduled']:.5f}", f"{e['tuned_min']:.5f}",
              f"{e['tuned_max']:.5f}", f"{e['max_rel_error_untuned']:.1e}",
              f"{e['max_rel_error_tuned']:.1e}", "yes" if e["norm_shares_conv_rate"] else "NO"]
             for e in checks["epochs"]]
    control_error = max(e["max_rel_error_untuned"] for arm in ("global_m", "global_hi")
                        for s in seeds for e in by[arm, s]["checks"]["epochs"])
    return [
        f"Rates seen inside the first optimizer step of each epoch (tempbalance, seed "
        f"{seeds[0]}):",
        "",
        f"- Tuned ({len(checks['tuned'])}): {', '.join(f'`{n}`' for n in checks['tuned'])}.",
        f"- Not tuned: {untuned}.",
        f"- Norm layers sharing their conv's rate: {norms}.",
        f"- Control arms: every parameter's rate against lr x factor x the closed-form cosine, "
        f"largest relative error over all epochs and seeds {control_error:.1e}.",
        "",
        markdown_table(["epoch", "cosine lr (closed form)", "tuned lr min", "tuned lr max",
                        "max rel err untuned vs cosine", "max rel err tuned vs cosine x factor",
                        "every BN = its conv"], table),
        "",
    ]


def provenance(rows: list[dict[str, Any]]) -> str:
    commands = sorted({r["command"] for r in rows})
    machines = sorted({r["machine"] for r in rows})
    return "\n".join([
        "Trained by: " + "; ".join(f"`{c}`" for c in commands) + ". Tables rebuilt by "
        "`.venv/bin/python -m experiments.tempbalance.tables` from `derived/runs.json`.",
        "",
        f"Wall time of the training runs (sum of their fits): "
        f"{sum(r['seconds'] for r in rows):.0f} s.",
        "",
        "Machine: " + " / ".join(machines) + ".",
    ])


def build(derived: Path = HERE / "derived") -> dict[str, str]:
    rows = read_json(derived / "runs.json")
    pairs = [p for p in SPLIT if any(r["pair"] == p for r in rows)]
    blocks = {pair: pair_block(pair, rows) for pair in pairs}
    blocks["provenance"] = provenance(rows)
    return blocks


def main(argv: Sequence[str] | None = None) -> int:
    return rebuild_tables(build, HERE, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
