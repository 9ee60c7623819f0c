"""``svd-callback compare`` and ``runs.read_run`` on damaged input: a warning naming the file and
what was skipped (exit 1), or one line and exit 2, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import random
import struct
from pathlib import Path

import pytest
from helpers import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from torch.utils.tensorboard import SummaryWriter

from svd_callback.cli import main
from svd_callback.runs import RunReadError, read_run


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and ": error: " in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def write_tb_run(path: Path, alphas: list[float]) -> Path:
    """Epoch e at step 10 e, as the callback logs it (see test_cli.write_tb_run)."""
    writer = SummaryWriter(str(path))
    for epoch, alpha in enumerate(alphas):
        writer.add_scalar("epoch", max(epoch - 1, 0), global_step=10 * epoch)
        if epoch:
            writer.add_scalar("epoch", epoch, global_step=10 * epoch)
        writer.add_scalar("spectral_summary/alpha_mean", alpha, global_step=10 * epoch)
    writer.close()
    return path


def write_history(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "spectral_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"type": "summary", "epoch": e, "step": 10 * e, "mode": "unfold",
         "metrics": {"alpha_mean": 3.0 - e}} for e in range(3)]


def junk_event_file(folder: Path) -> Path:
    """An event file whose framing (lengths, masked CRC32C) is valid and whose payload is not
    an ``Event``: TensorBoard's reader raises ``DecodeError`` on it."""
    def record(data: bytes) -> bytes:
        header = struct.pack("<Q", len(data))
        return (header + struct.pack("<I", masked_crc32c(header)) + data
                + struct.pack("<I", masked_crc32c(data)))

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.out.tfevents.1700000000.host.1.0"
    path.write_bytes(record(b"\xff\xfe junk \x00\x01"))
    return path


def random_bytes_history(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spectral_history.jsonl"
    path.write_bytes(random.Random(0).randbytes(4000))
    return path


def numbers_history(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spectral_history.jsonl"
    path.write_text("42\n[1, 2]\n7\n")
    return path


DAMAGED = {"junk_event_payload": (junk_event_file, "record 1 is not an event (DecodeError"),
           "random_bytes_history": (random_bytes_history, "not UTF-8"),
           "numbers_history": (numbers_history, "3 not a JSON object (lines 1, 2, 3)")}


@pytest.mark.parametrize("damage", list(DAMAGED))
@pytest.mark.parametrize("beside_a_good_run", [False, True])
def test_a_run_with_nothing_readable_is_one_line(capsys, tmp_path, damage, beside_a_good_run):
    make, why = DAMAGED[damage]
    path = make(tmp_path / "bad")
    runs = [tmp_path / "bad"]
    if beside_a_good_run:
        runs.insert(0, write_tb_run(tmp_path / "good", [9.0, 5.0, 4.0]))
    code, out, err = run_cli(capsys, "compare", *runs, "--no-plots")
    assert_one_line_error(code, err, str(path), why)
    assert out == ""
    with pytest.raises(RunReadError, match="skipped"):
        read_run(tmp_path / "bad")


def test_a_junk_event_file_beside_good_ones_is_skipped_with_a_warning(capsys, tmp_path):
    write_tb_run(tmp_path / "run", [9.0, 5.0, 4.0])
    junk = junk_event_file(tmp_path / "run")
    code, out, err = run_cli(capsys, "compare", tmp_path / "run", "--no-plots",
                             "--metric", "alpha_mean")
    assert code == 1 and "Traceback" not in err
    assert f"{junk}: record 1 is not an event" in err and "the file is skipped" in err
    assert ["2", "4"] in [line.split() for line in out.splitlines()]


@pytest.mark.parametrize("bad", [b"42", b"[1, 2]", b"\x80\xff binary \x00"])
def test_bad_history_lines_beside_good_rows_are_skipped_with_a_warning(capsys, tmp_path, bad):
    folder = write_history(tmp_path / "h", ROWS)
    path = folder / "spectral_history.jsonl"
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join([lines[0], bad, *lines[1:]]))
    code, out, err = run_cli(capsys, "compare", folder, "--no-plots", "--metric", "alpha_mean")
    assert code == 1 and "Traceback" not in err
    assert f"{path}: 1 line skipped" in err and "(line 2)" in err
    assert ["2", "1"] in [line.split() for line in out.splitlines()]


def test_rows_of_two_runs_in_one_file_are_told_apart_by_run_id(capsys, tmp_path):
    first = [{"type": "run", "event": "start", "step": 0, "run_id": "a"},
             *({**row, "run_id": "a", "metrics": {"alpha_mean": 9.0}} for row in ROWS)]
    second = [{"type": "run", "event": "start", "step": 0, "run_id": "b"},
              *({**row, "run_id": "b"} for row in ROWS)]
    interleaved = [row for pair in zip(first, second, strict=True) for row in pair]
    folder = write_history(tmp_path / "h", interleaved)
    run = read_run(folder)
    assert run.series("alpha_mean").tolist() == [3.0, 2.0, 1.0]  # run b's, not a mixture
    assert any("rows of 2 runs" in p and "b" in p for p in run.problems)
    code, out, err = run_cli(capsys, "compare", folder, "--no-plots", "--metric", "alpha_mean")
    assert code == 1 and "holds rows of 2 runs" in err


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["type", "epoch", "step", "layer", "mode", "metrics",
                                       "run_id", "message", "alpha_mean"]), children,
                      max_size=5),
    max_leaves=12,
)


@given(rows=st.lists(JSON_VALUES, max_size=8))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
def test_any_history_is_read_or_refused_in_one_line(tmp_path_factory, rows):
    """Whatever JSON a history file holds, read_run returns a run or raises RunReadError, and
    compare exits 0, 1 or 2 without a traceback."""
    folder = tmp_path_factory.mktemp("h")
    (folder / "spectral_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with contextlib.suppress(RunReadError):
        read_run(folder)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["compare", str(folder), "--no-plots"])
    assert code in (0, 1, 2) and "Traceback" not in err.getvalue()
