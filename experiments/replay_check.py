"""Do two versions of the package give the same alerts? Train the healthy_vs_broken run matrix
with the code of one repository, write its alert tables, and compare two such outputs.

``run`` loads ``experiments/healthy_vs_broken/run.py`` of ``--repo`` (its own ``svd_callback``
must come first on ``PYTHONPATH``), trains every run of every seed of its config with the
callback, and writes ``tables.json``: per seed and run, the alerts the callback raised online,
the ``alert`` rows of its history file, the alerts replayed from the history under each rule set,
every history row but the ``run`` rows (times and durations left out), and the experiment's
markdown tables (per-run, summary and per-rule tables of each rule set). ``compare`` reports every
difference between two ``tables.json`` and exits 1 when there is one.

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 PYTHONPATH=<repo> .venv/bin/python \\
        experiments/replay_check.py run --repo <repo> --out <dir>
    .venv/bin/python experiments/replay_check.py compare <dir a>/tables.json <dir b>/tables.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

VOLATILE = ("time", "seconds", "log_dir")
"""History keys that differ between two runs of the same code (wall times, paths)."""


def load_experiment(repo: Path) -> Any:
    """``experiments/healthy_vs_broken/run.py`` of ``repo`` as a module."""
    path = repo / "experiments" / "healthy_vs_broken" / "run.py"
    spec = importlib.util.spec_from_file_location("hvb_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hvb_run"] = module
    spec.loader.exec_module(module)
    return module


def _clean(value: Any) -> Any:
    """JSON-stable form: NaN as the string "nan", volatile keys dropped."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def run(repo: Path, out: Path, config: Path, seeds: list[int] | None) -> dict[str, Any]:
    import svd_callback

    experiment = load_experiment(repo)
    argv = ["--config", str(config), "--out", str(out / "runs")]
    if seeds:
        argv += ["--seeds", *map(str, seeds)]
    args = experiment.parse_args(argv)
    tables: dict[str, Any] = {"svd_callback": svd_callback.__file__, "seeds": {}}
    for seed in args.seeds:
        for name, overrides in args.runs.items():
            record = experiment.train(args, seed, name, dict(overrides))
            print(f"seed {seed} {name}: {record['seconds']:.1f} s", flush=True)
        runs = {name: experiment.load_run(args, seed, name) for name in args.runs}
        results = {rule_set: experiment.evaluate(runs, args.healthy, rule_set)
                   for rule_set in experiment.RULE_SETS}
        per_run = {}
        for name, record in runs.items():
            history = sorted(experiment.run_dir(args, seed, name).rglob("spectral_history.jsonl"))
            rows = [json.loads(line) for line in history[0].read_text().splitlines()]
            per_run[name] = {
                "online_alerts": _clean(record["online_alerts"]),
                "history_alerts": _clean([r for r in rows if r.get("type") == "alert"]),
                "history_rows": _clean([r for r in rows if r.get("type") != "run"]),
                "replayed": {rule_set: _clean([a.to_dict() for a in
                                               result["per_run"][name]["alerts"]])
                             for rule_set, result in results.items()},
                "replay_reproduces_online": experiment.same_alerts(
                    record["online_alerts"], results["default"]["per_run"][name]["alerts"]),
            }
        tables["seeds"][str(seed)] = {
            "runs": per_run,
            "run_table": experiment.run_table(runs, results),
            **{f"summary_table.{k}": experiment.summary_table(runs, r)
               for k, r in results.items()},
            **{f"rule_table.{k}": experiment.rule_table(r) for k, r in results.items()},
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.json").write_text(json.dumps(tables, indent=1, sort_keys=True))
    return tables


def differences(a: Any, b: Any, where: str = "", ignore: tuple[str, ...] = ()) -> list[str]:
    """Every path at which ``a`` and ``b`` differ (keys in ``ignore`` left out)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key == "svd_callback" or key in ignore:
                continue
            if key not in a or key not in b:
                out.append(f"{where}/{key}: only in {'b' if key not in a else 'a'}")
            else:
                out += differences(a[key], b[key], f"{where}/{key}", ignore)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{where}[{i}]", ignore)]
    return [] if a == b else [f"{where}: {str(a)[:120]!r} != {str(b)[:120]!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("run")
    train.add_argument("--repo", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1]
                       / "configs" / "experiments" / "healthy_vs_broken.yaml")
    train.add_argument("--seeds", type=int, nargs="+", default=None)
    compare = sub.add_parser("compare")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    compare.add_argument("--ignore", nargs="*", default=[],
                         help="keys left out of the comparison (e.g. a column one side lacks)")
    args = parser.parse_args(argv)
    if args.command == "run":
        tables = run(args.repo.resolve(), args.out.resolve(), args.config.resolve(), args.seeds)
        alerts = sum(len(r["online_alerts"]) for s in tables["seeds"].values()
                     for r in s["runs"].values())
        print(f"{tables['svd_callback']}: {alerts} online alerts in {len(tables['seeds'])} "
              f"seed(s); tables in {args.out / 'tables.json'}")
        return 0
    a, b = (json.loads(path.read_text()) for path in (args.a, args.b))
    found = differences(a, b, ignore=tuple(args.ignore))
    runs = sum(len(s["runs"]) for s in a["seeds"].values())
    alerts = sum(len(r["online_alerts"]) for s in a["seeds"].values() for r in s["runs"].values())
    rows = sum(len(r["history_rows"]) for s in a["seeds"].values() for r in s["runs"].values())
    print(f"a: {a['svd_callback']}\nb: {b['svd_callback']}\n{runs} runs, {alerts} online alerts, "
          f"{rows} history rows in a; keys ignored: {args.ignore or 'none'}; "
          f"{len(found)} difference(s)")
    for line in found:
        print(" ", line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
