"""The committed RESULTS.md tables of the seed-paper experiments equal the tables rebuilt from
their committed derived data (``experiments/<name>/derived/``), and the rebuild reads the data
(a changed number changes the tables). No training, no model: seconds."""

from __future__ import annotations

import importlib
import math
import shutil

import pytest

from experiments import derived
from experiments.common import EXPERIMENTS

NAMES = ("class_structure", "factorization_rank", "rmt_validation", "tempbalance")


@pytest.mark.parametrize("name", NAMES)
def test_committed_tables_equal_the_rebuilt_ones(name):
    tables = importlib.import_module(f"experiments.{name}.tables")
    folder = EXPERIMENTS / name
    rebuilt = tables.build(folder / "derived")
    committed = derived.read_blocks(folder / "RESULTS.md")
    assert set(committed) == set(rebuilt), f"{name}: blocks differ"
    for block, text in rebuilt.items():
        assert committed[block] == text.strip(), f"{name}: block {block!r} differs; run " \
            f"python -m experiments.{name}.tables"


PERTURBED = {"class_structure": ("epochs.csv", "feature_fraction"),
             "factorization_rank": ("factorizations.csv", "fit1"),
             "rmt_validation": ("spectra.csv", "num_spikes"),
             "tempbalance": ("runs.json", "final_acc")}
"""A number of every row of the main derived file that the tables show."""


@pytest.mark.parametrize("name", NAMES)
def test_the_tables_are_made_from_the_derived_data(tmp_path, name):
    tables = importlib.import_module(f"experiments.{name}.tables")
    copy = tmp_path / "derived"
    shutil.copytree(EXPERIMENTS / name / "derived", copy)
    before = tables.build(copy)
    file, key = PERTURBED[name]
    if file.endswith(".csv"):
        rows = derived.read_rows(copy / file)
        for row in rows:
            row[key] = row[key] + 1
        derived.write_rows(copy / file, rows, list(rows[0]))
    else:
        rows = derived.read_json(copy / file)
        for row in rows:
            row[key] = row[key] - 0.01
        derived.write_json(copy / file, rows)
    after = tables.build(copy)
    assert set(after) == set(before) and after != before


def test_rows_round_trip_and_blocks_are_replaced_in_place(tmp_path):
    rows = [{"a": 1, "b": 0.1 + 0.2, "c": None, "d": "x y", "e": True, "f": math.nan}]
    path = derived.write_rows(tmp_path / "r.csv", rows)
    back = derived.read_rows(path)[0]
    assert back["a"] == 1 and back["b"] == pytest.approx(0.3, rel=1e-9) and back["c"] is None
    assert back["d"] == "x y" and back["e"] is True and math.isnan(back["f"])
    results = tmp_path / "RESULTS.md"
    results.write_text("# T\n\n## Protocol\n\nfixed.\n\n## Reading (written after the runs)\n\nr\n")
    derived.write_blocks(results, {"one": "v1", "two": "w1"},
                         before="## Reading (written after the runs)")
    derived.write_blocks(results, {"one": "v2"})
    text = results.read_text()
    assert derived.read_blocks(results) == {"one": "v2", "two": "w1"}
    assert text.index("fixed.") < text.index("v2") < text.index("w1") < text.index("## Reading")
    assert text.rstrip().endswith("r")
