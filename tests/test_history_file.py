"""The history file under damage: undecodable and non-object lines are skipped with a count, a
resume always cuts back to the checkpoint's last analysis (no row twice, a ``resume`` row), a
torn line never swallows the next row, and a failed write is cut back."""

from __future__ import annotations

import collections
import errno
import json
import os
import warnings
from pathlib import Path

import pytest
from helpers import digits_fit
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint

from svd_callback.callback import SpectralMonitor
from svd_callback.sinks import history as history_module
from svd_callback.sinks.history import HistoryFile, HistoryWriteError, read_history, scan_history

N_LAYERS = 5  # SmallCNN: three convs, hidden, classifier
BATCHES = 4


def fit(root: Path, callbacks, max_epochs: int = 3, **options):
    settings_ = dict(limit_train_batches=BATCHES, limit_val_batches=1, num_sanity_val_steps=0,
                     batch_size=32, quiet=True)
    settings_.update(options)
    return digits_fit(root, callbacks, max_epochs=max_epochs, **settings_)


def layer_keys(rows) -> collections.Counter:
    return collections.Counter((r["step"], r["layer"], r["mode"]) for r in rows
                               if r["type"] == "layer")


# ---------------------------------------------------------------------------- the reader
GARBAGE = b"\x80\xff\xfe\x00binary\x9c"


@pytest.mark.parametrize("bad, reason", [
    (GARBAGE, "not UTF-8"),
    (b"42", "not a JSON object"),
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b"{not json", "not JSON"),
])
def test_scan_skips_a_bad_line_anywhere_and_counts_it(tmp_path, bad, reason):
    rows = [{"type": "layer", "step": s} for s in range(3)]
    good = [json.dumps(r).encode() for r in rows]
    path = tmp_path / "h.jsonl"
    path.write_bytes(b"\n".join([good[0], bad, good[1], good[2], bad]) + b"\n")
    scan = scan_history(path)
    assert scan.rows == rows and scan.skipped == {reason: [2, 5]} and not scan.partial_end
    assert scan.describe() == f"2 lines skipped: 2 {reason} (lines 2, 5)"
    with pytest.warns(UserWarning, match=f"2 lines skipped: 2 {reason}"):
        assert read_history(path) == rows


@given(
    rows=st.lists(st.dictionaries(st.sampled_from("abc"), st.integers() | st.text(max_size=4),
                                  max_size=3), max_size=6),
    garbage=st.lists(st.binary(max_size=12).map(lambda b: b"\xff" + b.replace(b"\n", b"")),
                     max_size=4),
    positions=st.lists(st.integers(0, 10), min_size=4, max_size=4),
    newline_at_end=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_scan_returns_exactly_the_rows_between_any_garbage(tmp_path_factory, rows, garbage,
                                                         positions, newline_at_end):
    """Oracle: the rows written, whatever garbage lines (never valid UTF-8: they start with
    0xff) are put between them."""
    lines = [json.dumps(r).encode() for r in rows]
    for junk, at in zip(garbage, positions, strict=False):
        lines.insert(min(at, len(lines)), junk)
    path = tmp_path_factory.mktemp("h") / "h.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if newline_at_end else b""))
    scan = scan_history(path)
    assert scan.rows == rows
    assert scan.n_skipped == len(garbage)


# ---------------------------------------------------------------------------- the writer
def test_an_append_after_a_torn_line_starts_a_fresh_line(tmp_path):
    path = tmp_path / "h.jsonl"
    HistoryFile(path).append([{"step": 1}])
    with path.open("ab") as handle:  # a crash in the middle of the next write
        handle.write(b'{"step": 2, "metr')
    HistoryFile(path).append([{"step": 3}, {"step": 4}])
    scan = scan_history(path)
    assert [r["step"] for r in scan.rows] == [1, 3, 4]
    assert scan.skipped == {"not JSON": [2]}


def test_a_write_that_fails_part_way_is_cut_back(tmp_path, monkeypatch):
    """ENOSPC after part of the data is written (os.write mocked): the file is cut back to its
    last complete row and the next append is whole."""
    path = tmp_path / "h.jsonl"
    history = HistoryFile(path)
    size = history.append([{"step": 1}])
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))  # a torn line reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(history_module.os, "write", full_disk)
    with pytest.raises(HistoryWriteError, match="No space left.*cut back to its last complete"):
        history.append([{"step": 2, "metrics": {"alpha": 3.0}}, {"step": 2}])
    assert path.stat().st_size == size
    monkeypatch.setattr(history_module.os, "write", real_write)
    history.append([{"step": 3}])
    assert [r["step"] for r in scan_history(path).rows] == [1, 3]


def test_a_real_short_write_at_the_file_size_limit_is_cut_back(tmp_path):
    """The kernel writes part of the data, then refuses (RLIMIT_FSIZE: EFBIG), as on a full
    disk; the file is cut back."""
    resource = pytest.importorskip("resource")
    import signal

    path = tmp_path / "h.jsonl"
    history = HistoryFile(path)
    size = history.append([{"step": 1}])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
        with pytest.raises(HistoryWriteError, match="cut back"):
            history.append([{"step": 2, "padding": "x" * 100}])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert path.stat().st_size == size
    history.append([{"step": 3}])
    assert [r["step"] for r in scan_history(path).rows] == [1, 3]


# ---------------------------------------------------------------------------- in training
def checkpointed_run(root: Path, **monitor_options):
    """Three epochs of 4 steps, a checkpoint after each epoch; the history file."""
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, filename="{epoch}",
                                  save_on_train_epoch_end=True)
    fit(root, [SpectralMonitor(figures_every_n=0, **monitor_options), checkpoints],
        enable_checkpointing=True)
    return root / "spectral_history.jsonl"


def resume(root: Path, checkpoint: str, **options) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(root, [SpectralMonitor(figures_every_n=0, **options.pop("monitor", {}))],
            ckpt_path=root / "ckpt" / checkpoint, quiet=False, **options)
    return caught


@pytest.mark.parametrize("damage", ["garbage_at_end", "garbage_in_middle", "number", "list"])
def test_resume_from_a_damaged_history_cuts_back_without_duplicates(tmp_path, damage):
    history = checkpointed_run(tmp_path)
    uninterrupted = layer_keys(read_history(history))
    lines = history.read_bytes().split(b"\n")
    bad = {"garbage_at_end": GARBAGE, "garbage_in_middle": GARBAGE, "number": b"42",
           "list": b"[1, 2]"}[damage]
    at = len(lines) - 1 if damage == "garbage_at_end" else len(lines) // 3
    lines.insert(at, bad)
    history.write_bytes(b"\n".join(lines))
    caught = resume(tmp_path, "epoch=0.ckpt")
    assert any("1 line skipped" in str(w.message) for w in caught), [str(w.message)
                                                                     for w in caught]
    scan = scan_history(history)
    assert scan.n_skipped == 0  # the cut rewrote the rows, without the bad line
    runs = [(r["event"], r["step"]) for r in scan.rows if r["type"] == "run"]
    assert runs == [("start", 0), ("resume", BATCHES)]
    assert layer_keys(scan.rows) == uninterrupted  # every row once, none lost
    assert len({r["run_id"] for r in scan.rows}) == 1


def test_resume_from_a_checkpoint_taken_before_its_steps_analysis(tmp_path):
    """check_on='train_epoch_end', validation every 2 epochs: the checkpoint of step 12 is taken
    at the validation's end, before that step's analysis (its state says: last analysed step
    6), and the resumed run analyses step 12 again; the history holds it once."""
    options = dict(limit_train_batches=6, check_val_every_n_epoch=2, max_epochs=4)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1,
                                  filename="{epoch}-{step}")
    monitor = SpectralMonitor(check_on="train_epoch_end", figures_every_n=0)
    fit(tmp_path, [monitor, checkpoints], enable_checkpointing=True, **options)
    history = tmp_path / "spectral_history.jsonl"
    uninterrupted = layer_keys(read_history(history))
    assert sorted({step for step, _, _ in uninterrupted}) == [0, 6, 12, 18, 24]
    resume(tmp_path, "epoch=1-step=12.ckpt", monitor={"check_on": "train_epoch_end"},
           **options)
    rows = read_history(history)
    assert layer_keys(rows) == uninterrupted
    assert [(r["event"], r["step"]) for r in rows if r["type"] == "run"] == [
        ("start", 0), ("resume", 12)]


def test_a_full_disk_costs_one_analysis_and_one_warning(tmp_path, monkeypatch):
    """The write of the step-8 analysis fails after half its bytes (ENOSPC); every other
    analysis is in the file whole (without the cut the next analysis's first row was lost)."""
    real_write, calls = os.write, {"n": 0}

    def write(fd, data):
        if b'"step": 8' in bytes(data) and not calls["n"]:
            calls["n"] += 1
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(history_module.os, "write", write)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, [SpectralMonitor(figures_every_n=0)], quiet=False)
    failures = [str(w.message) for w in caught if "No space left" in str(w.message)]
    assert calls["n"] == 1 and len(failures) == 1 and "step 8" in failures[0]
    scan = scan_history(tmp_path / "spectral_history.jsonl")
    assert scan.n_skipped == 0
    per_step = collections.Counter(step for step, _, _ in layer_keys(scan.rows))
    assert per_step == {0: N_LAYERS, 4: N_LAYERS, 12: N_LAYERS}


def test_a_new_run_after_a_crash_torn_line_keeps_its_run_row(tmp_path):
    history = tmp_path / "spectral_history.jsonl"
    history.write_text(json.dumps({"type": "run", "event": "start", "step": 0}) + "\n"
                       + '{"type": "layer", "step": 4, "layer": "hid')  # killed mid-write
    fit(tmp_path, [SpectralMonitor(figures_every_n=0)], max_epochs=1)
    scan = scan_history(history)
    assert scan.skipped == {"not JSON": [2]}
    runs = [r for r in scan.rows if r["type"] == "run"]
    assert [r["event"] for r in runs] == ["start", "start"] and runs[1]["run_id"]
    assert layer_keys(scan.rows) == collections.Counter(
        {(step, layer, "unfold"): 1 for step in (0, BATCHES)
         for layer in ["features.0", "features.2", "features.5", "hidden", "classifier"]})
