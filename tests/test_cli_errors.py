"""Bad input to the svd-callback command line: one line on stderr, a non-zero exit status and no
traceback; warnings (exit status 1) where the output is printed but incomplete."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from torch import nn
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and ": error: " in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def write_tb_run(path: Path, alphas: list[float], tag: str = "alpha_mean") -> Path:
    """Epoch e at step 10 e, as the callback logs it (see test_cli.write_tb_run)."""
    writer = SummaryWriter(str(path))
    for epoch, alpha in enumerate(alphas):
        writer.add_scalar("epoch", max(epoch - 1, 0), global_step=10 * epoch)
        if epoch:
            writer.add_scalar("epoch", epoch, global_step=10 * epoch)
        writer.add_scalar(f"spectral_summary/{tag}", alpha, global_step=10 * epoch)
        writer.add_scalar("spectral/alpha/conv1", alpha + 1, global_step=10 * epoch)
    writer.close()
    return path


def write_history(path: Path, rows: list[dict], tail: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows) + tail
    (path / "spectral_history.jsonl").write_text(text)
    return path


# every number, device and output path is checked before any work: nothing on stdout
BAD_ARGUMENTS = [
    (["demo", "--epochs", "-1"], "--epochs: must be a positive integer, got -1"),
    (["demo", "--epochs", "0"], "--epochs: must be a positive integer, got 0"),
    (["demo", "--epochs", "2.5"], "--epochs: must be an integer, got '2.5'"),
    (["demo", "--seed", "-1"], "--seed: must be a non-negative integer"),
    (["demo", "--seed", str(2**32)], "--seed: must be at most 4294967295"),
    (["analyze", "resnet18", "--num-classes", "-5"], "--num-classes: must be a positive integer"),
    (["analyze", "{model}", "--mode", "operator", "--input-size", "-3"],
     "--input-size: must be a positive integer, got -3"),
    (["analyze", "{model}", "--mode", "operator", "--input-size", "0"],
     "--input-size: must be a positive integer, got 0"),
    (["analyze", "{model}", "--mode", "operator", "--input-size", "4097"],
     "--input-size: must be at most 4096, got 4097"),
    (["analyze", "{model}", "--mode", "operator", "--input-size", "6", "6", "6", "6"],
     "--input-size takes 1 to 3 numbers"),
    (["analyze", "{model}", "--device", "bogus"], "'bogus' is not a torch device"),
    (["analyze", "{model}", "--device", "meta"], "the meta device holds no weights"),
    (["analyze", "{model}", "--csv", "/nonexistent_dir/x.csv"],
     "--csv: directory /nonexistent_dir does not exist"),
    (["analyze", "{model}", "--json", "{tmp}"], "is a directory, not a file"),
    (["analyze", "{model}", "--figures", "{model}"], "exists and is not a directory"),
    (["compare", "{tmp}", "{tmp}", "--mode", "bogus"], "--mode: invalid choice: 'bogus'"),
    (["compare", "{tmp}", "--out", "{model}/plots"], "exists and is not a directory"),
    (["demo", "--out", "{model}"], "exists and is not a directory"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS,
                         ids=[" ".join(a[:1] + a[2:]) for a, _ in BAD_ARGUMENTS])
def test_bad_argument_is_one_line_before_any_work(capsys, tmp_path, saved_module, argv,
                                                  message):
    argv = [a.format(model=saved_module, tmp=tmp_path) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, message)
    assert out == ""


def test_cuda_device_without_a_gpu_is_one_line(capsys, saved_module):
    wanted = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU; cuda:0 without one
    code, out, err = run_cli(capsys, "analyze", saved_module, "--device", wanted)
    assert_one_line_error(code, err, f"--device: {wanted}:")
    assert out == ""


def test_real_entry_point_demo_with_negative_epochs():
    """The installed command runs ``main`` through ``python -m``: it must not train forever."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "svd_callback.cli", "demo", "--epochs", "-1"],
                            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "--epochs: must be a positive integer, got -1" in result.stderr
    assert result.stdout == ""


def test_torchvision_model_that_refuses_its_arguments_is_one_line(capsys, monkeypatch):
    from torchvision import models

    def refuse(**kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117]\ndata. DefaultCPUAllocator: "
                           "not enough memory")

    monkeypatch.setattr(models, "get_model_builder", lambda name: refuse)
    code, out, err = run_cli(capsys, "analyze", "resnet18", "--num-classes", "1000000000")
    assert_one_line_error(code, err, "cannot build torchvision model 'resnet18'",
                          "'num_classes': 1000000000", "not enough memory")


def test_help_returns_zero(capsys):
    code, out, _ = run_cli(capsys, "analyze", "--help")
    assert code == 0 and "--input-size" in out


def test_operator_input_size_the_model_rejects_is_an_error(capsys, saved_module):
    # 3x3 input: the conv gives 8 * 3 * 3 = 72 features, the Linear wants 8 * 6 * 6 = 288
    code, out, err = run_cli(capsys, "analyze", saved_module, "--mode", "operator",
                             "--input-size", "3", "--no-progress")
    assert_one_line_error(code, err, "--input-size 3", "RuntimeError")
    assert out == ""


def test_operator_input_size_no_conv_can_use_is_an_error(capsys, tmp_path):
    """Stride-2 convs: input 5 is odd for the first conv, which gives 3 (odd) to the second."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1),
                          nn.Conv2d(4, 4, 3, stride=2, padding=1))
    torch.save(model, tmp_path / "strided.pt")
    code, out, err = run_cli(capsys, "analyze", tmp_path / "strided.pt", "--mode", "operator",
                             "--input-size", "5", "--no-progress")
    assert_one_line_error(code, err, "none of the 2 conv layers",
                          "input size (5, 5) divisible by stride (2, 2)")
    # input 6: the first conv sees 6 (even) and is analysed, the second sees 3: exit 0
    code, out, err = run_cli(capsys, "analyze", tmp_path / "strided.pt", "--mode", "operator",
                             "--input-size", "6", "--no-progress")
    assert code == 0, err
    assert "input size (3, 3) divisible by stride (2, 2)" in out


def test_operator_mode_on_weights_only_checkpoint_is_an_error(capsys, tmp_path):
    torch.save(small_cnn_state_dict(), tmp_path / "weights.pt")
    for extra in ([], ["--input-size", "8"]):
        code, out, err = run_cli(capsys, "analyze", tmp_path / "weights.pt", "--mode", "unfold",
                                 "operator", "--no-progress", *extra)
        assert_one_line_error(code, err, "holds weights only: pass --model-class")
        assert out.startswith("note: weights only")


def test_meta_device_model_is_skipped_with_reasons_then_an_error(capsys, tmp_path):
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 3))
    torch.save(model, tmp_path / "meta.pt")
    code, out, err = run_cli(capsys, "analyze", tmp_path / "meta.pt", "--no-progress")
    assert_one_line_error(code, err, "no layer of", "could be analysed")
    for layer in ("0", "2"):
        assert f"{layer} [unfold] skipped: weight is on the meta device" in out


def small_cnn_state_dict() -> dict[str, torch.Tensor]:
    from svd_callback.examples import SmallCNN

    torch.manual_seed(0)
    return SmallCNN().state_dict()


def checkpoint(model, path: Path, drop_hparams: tuple[str, ...] = ()) -> Path:
    """The two entries of a Lightning checkpoint that loading reads."""
    hparams = {k: v for k, v in model.hparams.items() if k not in drop_hparams}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, path)
    return path


def test_checkpoint_of_another_width_or_class_is_one_line(capsys, tmp_path):
    from svd_callback.examples import SmallCNN

    # width 8 saved, width 16 rebuilt (the checkpoint lost its width hyper-parameter)
    ckpt = checkpoint(SmallCNN(width=8), tmp_path / "w8.ckpt", drop_hparams=("width",))
    code, out, err = run_cli(capsys, "analyze", ckpt, "--model-class",
                             "svd_callback.examples:SmallCNN", "--no-progress")
    assert_one_line_error(code, err, "does not fit svd_callback.examples:SmallCNN",
                          "features.0.weight [8, 1, 3, 3] in the checkpoint, "
                          "[16, 1, 3, 3] in the model")
    # 7 tensors change shape with the width: 3 conv weights, 3 conv biases, hidden.weight
    assert "7 tensor(s) of another shape" in err
    # nn.Identity accepts any hyper-parameters and has no state: every key is foreign to it
    n_keys = len(SmallCNN().state_dict())
    code, out, err = run_cli(capsys, "analyze", ckpt, "--model-class", "torch.nn:Identity",
                             "--no-progress")
    assert_one_line_error(code, err, f"{n_keys} key(s) the model lacks")
    code, out, err = run_cli(capsys, "analyze", ckpt, "--model-class", "torch.nn:Linear",
                             "--no-progress")
    assert_one_line_error(code, err, "cannot build torch.nn:Linear", "TypeError")


def test_compare_two_runs_without_a_common_metric_names_what_each_has(capsys, tmp_path):
    write_tb_run(tmp_path / "a", [3.0, 2.0], tag="alpha_mean")
    write_tb_run(tmp_path / "b", [9.0, 8.0], tag="stable_rank_mean")
    code, out, err = run_cli(capsys, "compare", tmp_path / "a", tmp_path / "b", "--no-plots")
    assert_one_line_error(code, err, "a has alpha_mean", "b has stable_rank_mean")
    assert out == ""
    code, out, err = run_cli(capsys, "compare", tmp_path / "a", tmp_path / "b", "--no-plots",
                             "--metric", "alpha_mean")
    assert_one_line_error(code, err, "a has alpha_mean", "b has stable_rank_mean")


def test_compare_a_mode_one_run_lacks_names_its_modes(capsys, tmp_path):
    rows = [{"type": "summary", "epoch": e, "step": 10 * e, "mode": "unfold",
             "metrics": {"alpha_mean": 3.0 - e}} for e in range(3)]
    write_history(tmp_path / "h", rows)
    write_history(tmp_path / "g", [{**r, "mode": "operator"} for r in rows]
                  + [{**r, "mode": "unfold"} for r in rows])
    code, out, err = run_cli(capsys, "compare", tmp_path / "h", tmp_path / "g", "--no-plots",
                             "--mode", "operator", "--metric", "alpha_mean")
    assert_one_line_error(code, err, "h has no summary metric in mode operator",
                          "(its modes: unfold)", "g has alpha_mean")


def test_compare_a_short_run_warns_and_exits_1(capsys, tmp_path):
    write_tb_run(tmp_path / "long", [9.0, 5.0, 4.0, 3.0])
    write_tb_run(tmp_path / "short", [9.0])  # a run stopped after its initial analysis
    code, out, err = run_cli(capsys, "compare", tmp_path / "long", tmp_path / "short",
                             "--no-plots", "--metric", "alpha_mean")
    assert code == 1
    assert ["3", "3", "-"] in [line.split() for line in out.splitlines()]
    assert err.count("\n") == 1 and "warning" in err and "Traceback" not in err
    assert "short (last epoch 0)" in err and "the longest reaches epoch 3" in err


def test_compare_a_truncated_event_file_warns_and_exits_1(capsys, tmp_path):
    write_tb_run(tmp_path / "whole", [9.0, 5.0, 4.0, 3.0])
    write_tb_run(tmp_path / "cut", [9.0, 5.0, 4.0, 3.0])
    (event_file,) = (tmp_path / "cut").glob("events.out.tfevents.*")
    size = event_file.stat().st_size
    with event_file.open("r+b") as f:  # the last record loses its final byte
        f.truncate(size - 1)
    code, out, err = run_cli(capsys, "compare", tmp_path / "whole", tmp_path / "cut",
                             "--no-plots", "--metric", "alpha_mean")
    assert code == 1
    assert f"{event_file.name} is truncated" in err and f"of {size - 1})" in err
    assert "Traceback" not in err


def test_event_file_problem_walks_the_record_framing(tmp_path):
    """Oracle: TFRecord framing, 8 + 4 + length + 4 bytes per record, built by hand."""
    import struct

    from svd_callback.runs import event_file_problem

    payloads = [b"x" * 5, b"", b"y" * 300]
    blob = b"".join(struct.pack("<Q", len(p)) + b"\0" * 4 + p + b"\0" * 4 for p in payloads)
    path = tmp_path / "events.out.tfevents.0"
    path.write_bytes(blob)
    assert event_file_problem(path) is None
    path.write_bytes(blob[:21 + 16])  # record 1 whole (21 bytes), record 2 whole (16 bytes)
    assert event_file_problem(path) is None
    for cut in (21 + 16 + 1, 21 + 16 + 11, len(blob) - 1):
        path.write_bytes(blob[:cut])
        problem = event_file_problem(path)
        assert problem is not None and "ends inside record 3" in problem
        assert f"(byte 37 of {cut})" in problem and "first 2 records" in problem


def test_compare_a_folder_of_several_runs_warns(capsys, tmp_path):
    rows = [{"type": "summary", "epoch": 0, "step": 0, "mode": "unfold",
             "metrics": {"alpha_mean": 3.0}}]
    write_history(tmp_path / "runs" / "version_0", rows)
    write_history(tmp_path / "runs" / "version_1", [{**rows[0], "metrics": {"alpha_mean": 7.0}}])
    newest = tmp_path / "runs" / "version_1" / "spectral_history.jsonl"
    os.utime(newest, (2e9, 2e9))
    code, out, err = run_cli(capsys, "compare", tmp_path / "runs", "--no-plots",
                             "--metric", "alpha_mean")
    assert code == 1 and "holds 2 history files" in err and f"read {newest}" in err
    assert ["0", "7"] in [line.split() for line in out.splitlines()]
    write_tb_run(tmp_path / "tb" / "version_0", [3.0])
    write_tb_run(tmp_path / "tb" / "version_1", [4.0])
    code, out, err = run_cli(capsys, "compare", tmp_path / "tb", "--no-plots",
                             "--metric", "alpha_mean")
    assert code == 1 and "holds 2 folders of event files" in err


def test_compare_a_partial_last_history_line_warns(capsys, tmp_path):
    rows = [{"type": "summary", "epoch": e, "step": 10 * e, "mode": "unfold",
             "metrics": {"alpha_mean": 3.0 - e}} for e in range(3)]
    write_history(tmp_path / "h", rows, tail='{"type": "summary", "epoch": 3, "me')
    code, out, err = run_cli(capsys, "compare", tmp_path / "h", "--no-plots",
                             "--metric", "alpha_mean")
    assert code == 1 and "ends in a partial line (4)" in err
    assert ["2", "1"] in [line.split() for line in out.splitlines()]
    write_history(tmp_path / "bad", rows, tail="")  # a broken line and no record: an error
    (tmp_path / "bad" / "spectral_history.jsonl").write_text('{"type": \n{}\n')
    code, _, err = run_cli(capsys, "compare", tmp_path / "bad", "--no-plots")
    assert_one_line_error(code, err, "spectral_history.jsonl holds no spectral records",
                          "1 line skipped: 1 not JSON (line 1)")


def test_demo_does_not_import_the_command_line():
    """The table formatting lives in its own module: demo and cli do not import each other."""
    tree = ast.parse((ROOT / "svd_callback" / "demo.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert "svd_callback.cli" not in imported and "svd_callback.table" in imported
