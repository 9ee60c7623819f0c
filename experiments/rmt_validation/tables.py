"""The tables of experiments/rmt_validation/RESULTS.md, rebuilt from its derived data alone.

    .venv/bin/python -m experiments.rmt_validation.tables   (seconds; no model, no fit)
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.rmt_validation.tables")

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from experiments.common import fmt, markdown_table
from experiments.derived import group_by, read_json, read_rows, rebuild_tables
from experiments.seed_stats import proportion

HERE = Path(__file__).resolve().parent
STATES = ("init", "trained", "shuffled")
CLASSES = ("heavy tail", "bulk + spikes", "truncated", "log-normal", "exponential", "undecided")
MIN_EIGS = 100
PART_A_MIN_EIGS = 30


def classification(row: dict) -> str:
    """Protocol (amendment): heavy tail = power law on the whole spectrum and beyond the bulk;
    bulk + spikes = a power law only with the bulk; else the full-spectrum verdict."""
    full = row.get("verdict_full")
    if full is None:
        return "untested"
    if full == "power law":
        return "heavy tail" if row.get("verdict_beyond") == "power law" else "bulk + spikes"
    return full


def _models(rows: list[dict]) -> dict[str, list[dict]]:
    """Part B's spectra by model: the MLP's layers and the width-16 ResNet's slices spectra,
    both with >= 100 eigenvalues; and (reference, outside the verdicts) the ResNet's unfold
    conv spectra."""
    mlp = [r for r in rows if r["model"] == "mlp" and r["n_eigs"] >= MIN_EIGS]
    slices = [r for r in rows if r["model"] == "resnet16" and r["mode"] == "slices"
              and r["kind"] != "linear" and r["n_eigs"] >= MIN_EIGS]
    unfold = [r for r in rows if r["model"] == "resnet16" and r["mode"] == "unfold"
              and r["kind"] != "linear" and r["n_eigs"] >= PART_A_MIN_EIGS]
    return {"mlp": mlp, "resnet16-slices": slices, "resnet16-unfold (32-64 eigenvalues, "
            "reference)": unfold}


def runs_block(meta: dict) -> str:
    rows = [[r["model"], r["seed"], f"{100 * r['test_acc']:.2f}", f"{r['train_seconds']:.0f}"]
            for r in meta["runs"]]
    machines = sorted({r["machine"] for r in meta["runs"]})
    return "\n".join([
        f"Command: `{meta['command']}`; rebuilt by `.venv/bin/python -m "
        "experiments.rmt_validation.tables` from `derived/spectra.csv`.",
        "",
        markdown_table(["model", "seed", "final test acc %", "training s"], rows),
        "",
        f"Wall time of the analyses: {meta['wall_seconds']:.0f} s. Training machine: "
        + " / ".join(machines) + ".",
    ])


def part_a_block(rows: list[dict]) -> str:
    """The earlier per-layer criterion (MP at init, spikes after training, alpha lower), with
    Wilson intervals over (seed, layer) pairs."""
    convs = [r for r in rows if r["model"] == "resnet16" and r["kind"] != "linear"]
    spectra = {(r["seed"], r["layer"], r["mode"], r["state"]): r for r in convs}
    table = []
    for mode in ("unfold", "operator", "slices"):
        pairs = sorted({(s, layer) for (s, layer, m, st) in spectra
                        if m == mode and st == "init"
                        and spectra[(s, layer, m, st)]["n_eigs"] >= PART_A_MIN_EIGS})
        if not pairs:
            continue

        def get(seed, layer, state, key, mode=mode):
            return spectra[(seed, layer, mode, state)][key]

        init_mp = sum(get(s, layer, "init", "num_spikes") == 0 for s, layer in pairs)
        trained_off = sum(get(s, layer, "trained", "num_spikes") > 0 for s, layer in pairs)
        shuffled_mp = sum(get(s, layer, "shuffled", "num_spikes") == 0 for s, layer in pairs)
        alpha_lower = sum(get(s, layer, "trained", "alpha") < get(s, layer, "init", "alpha")
                          for s, layer in pairs)
        holds = sum(get(s, layer, "init", "num_spikes") == 0
                    and get(s, layer, "trained", "num_spikes") > 0
                    and get(s, layer, "trained", "alpha") < get(s, layer, "init", "alpha")
                    for s, layer in pairs)
        seeds = sorted({s for s, _ in pairs})
        medians = {state: [statistics.median(get(s, layer, state, "alpha")
                                             for t, layer in pairs if t == s) for s in seeds]
                   for state in STATES}
        n = len(pairs)
        table.append([mode, len({layer for _, layer in pairs}), proportion(init_mp, n).text(),
                      proportion(trained_off, n).text(), proportion(shuffled_mp, n).text(),
                      proportion(alpha_lower, n).text(), proportion(holds, n).text(),
                      *(", ".join(fmt(v) for v in medians[state]) for state in STATES)])
    return "\n".join([
        "Conv layers with >= 30 eigenvalues per mode; counts over (seed, layer) pairs, Wilson "
        "95% intervals (the pairs of one seed are not independent: indicative). `spikes`: "
        "eigenvalues beyond the fitted MP edge + Tracy-Widom margin. Median alpha per seed "
        "(KS fit), listed for seeds 0, 1, 2.",
        "",
        markdown_table(["mode", "layers", "init: no spike", "trained: >= 1 spike",
                        "shuffled: no spike", "alpha trained < init", "all three (init MP, "
                        "trained spikes, alpha lower)", "median alpha init", "median alpha "
                        "trained", "median alpha shuffled"], table),
    ])


def part_b_block(rows: list[dict]) -> str:
    """Claims 1-2 per model: spikes, and the heavy-tail classification per state."""
    table, lines = [], []
    for model, spectra in _models(rows).items():
        by_state = group_by(spectra, "state")
        for state in STATES:
            group = by_state.get((state,), [])
            counts = Counter(classification(r) for r in group)
            spiky = sum(r["num_spikes"] > 0 for r in group)
            full_pl = sum(r.get("verdict_full") == "power law" for r in group)
            table.append([model, state, len(group), proportion(spiky, len(group)).text(),
                          proportion(full_pl, len(group)).text(),
                          *(counts.get(c, 0) for c in CLASSES)])
        if model.endswith("reference)"):
            continue
        trained = by_state.get(("trained",), [])
        controls = by_state.get(("init",), []) + by_state.get(("shuffled",), [])
        heavy = proportion(sum(classification(r) == "heavy tail" for r in trained),
                           len(trained))
        control_heavy = sum(classification(r) == "heavy tail" for r in controls)
        if heavy.low > 0.5 and control_heavy == 0:
            verdict = "supported"
        elif heavy.high < 0.5:
            verdict = "not supported"
        else:
            verdict = "inconclusive"
        init_mp = sum(r["num_spikes"] == 0 for r in by_state.get(("init",), []))
        trained_spikes = sum(r["num_spikes"] > 0 for r in trained)
        shuffled_mp = sum(r["num_spikes"] == 0 for r in by_state.get(("shuffled",), []))
        alphas = [r["alpha_full"] for r in trained if classification(r) == "heavy tail"]
        alpha_text = (f"alpha of the heavy-tailed ones {fmt(min(alphas))}-{fmt(max(alphas))}"
                      if alphas else "no alpha is reported as a heavy-tail exponent")
        described = Counter(classification(r) for r in trained)
        lines.append(
            f"- **{model}.** Claim 1: init without spike "
            f"{proportion(init_mp, len(by_state.get(('init',), []))).text()}; trained with "
            f">= 1 spike {proportion(trained_spikes, len(trained)).text()}; shuffled without "
            f"spike {proportion(shuffled_mp, len(by_state.get(('shuffled',), []))).text()}. "
            f"Claim 2: trained spectra classified `heavy tail` {heavy.text()}, init/shuffled "
            f"{control_heavy}/{len(controls)}: **{verdict}**; the trained spectra are "
            + ", ".join(f"{k} {v}" for k, v in described.most_common()) + f"; {alpha_text}.")
    return "\n".join([
        "Spectra with >= 100 eigenvalues (MLP `fc1`, `fc2`: 512; ResNet-8 width 16 in "
        "`slices` mode: 144-576), counted over (seed, layer); the ResNet's unfold spectra "
        "(32-64 eigenvalues) for reference only. `full power law`: verdict `power law` on the "
        "whole spectrum; the classification columns count each spectrum once.",
        "",
        markdown_table(["model", "state", "spectra", ">= 1 spike", "full power law",
                        *CLASSES], table),
        "",
        *lines,
    ])


def spectra_block(rows: list[dict]) -> str:
    """Every tested spectrum of the three groups."""
    table = []
    for model, spectra in _models(rows).items():
        for r in sorted(spectra, key=lambda r: (r["seed"], r["layer"],
                                                STATES.index(r["state"]))):
            cls = classification(r)
            table.append([model.split(" ")[0], r["seed"], r["layer"], r["state"], r["n_eigs"],
                          r["num_spikes"], r["n_tail"], r["alpha_full"], r["verdict_full"],
                          r["n_beyond"], r["verdict_beyond"], cls,
                          r["alpha_full"] if cls == "heavy tail" else math.nan])
    return markdown_table(["model", "seed", "layer", "state", "eigs", "spikes", "tail (full)",
                           "alpha (full fit)", "full", "beyond bulk", "beyond", "classification",
                           "heavy-tail alpha"], table)


def ratios_block(rows: list[dict]) -> str:
    """R (power law minus alternative) and p of every test of the trained spectra with >= 100
    eigenvalues, on the whole spectrum and beyond the bulk."""
    table = []

    def pair(r: dict, short: str, where: str) -> str:
        ratio, p = r.get(f"R_{short}_{where}"), r.get(f"p_{short}_{where}")
        if ratio is None or p is None or not math.isfinite(ratio):
            return "-"
        return f"{ratio:+.1f} ({p:.2g})"

    for model, spectra in _models(rows).items():
        if model.endswith("reference)"):
            continue
        for r in sorted((r for r in spectra if r["state"] == "trained"),
                        key=lambda r: (r["seed"], r["layer"])):
            table.append([model, r["seed"], r["layer"], r["n_tail"],
                          *(pair(r, s, "full") for s in ("exp", "ln", "tpl")), r["n_beyond"],
                          *(pair(r, s, "beyond") for s in ("exp", "ln", "tpl"))])
    return "\n".join([
        "Trained spectra with >= 100 eigenvalues: R = sum of log-likelihood ratios, power law "
        "minus the alternative (R > 0 favours the power law), and p, on the tail from the fit "
        "(`full`) and on the eigenvalues beyond the MP edge + TW margin (`beyond`).",
        "",
        markdown_table(["model", "seed", "layer", "tail", "full: vs exponential",
                        "full: vs log-normal", "full: vs truncated", "beyond bulk",
                        "beyond: vs exponential", "beyond: vs log-normal",
                        "beyond: vs truncated"], table),
    ])


def build(derived: Path = HERE / "derived") -> dict[str, str]:
    meta = read_json(derived / "meta.json")
    rows = read_rows(derived / "spectra.csv")
    return {"runs": runs_block(meta), "part A": part_a_block(rows),
            "part B": part_b_block(rows), "likelihood ratios": ratios_block(rows),
            "spectra": spectra_block(rows)}


def main(argv: Sequence[str] | None = None) -> int:
    return rebuild_tables(build, HERE, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
