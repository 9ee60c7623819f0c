"""The svd-callback command line: analyze and compare, including bad input."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from svd_callback.examples import SmallCNN
from svd_callback.loading import weights_only_model
from svd_callback.runs import read_run
from svd_callback.sinks.tags import parse_tag


def test_analyze_saved_module_writes_csv_and_json(capsys, saved_module, tmp_path):
    csv, js = tmp_path / "t.csv", tmp_path / "t.json"
    code, out, err = run_cli(capsys, "analyze", str(saved_module), "--mode", "unfold", "slices",
                             "--csv", str(csv), "--json", str(js), "--no-progress")
    assert code == 0, err
    assert "alpha" in out and "stable_rank" in out
    # 8 and 10 eigenvalues: no tail fit, and the table says why
    assert "0 [unfold] alpha = nan: too few eigenvalues for a tail fit (8 < 20)" in out
    assert "3 [slices] alpha = nan: too few eigenvalues" in out
    rows = json.loads(js.read_text())
    assert {(r["layer"], r["mode"]) for r in rows} == {
        ("0", "unfold"), ("3", "unfold"), ("0", "slices"), ("3", "slices")}
    assert csv.read_text().startswith("layer,")


def test_analyze_svd_method_option(capsys, saved_module, tmp_path):
    from svd_callback.config import SVD_METHODS as CHOICES
    from svd_callback.spectra import SVD_METHODS

    assert CHOICES == SVD_METHODS
    tables = {}
    for method in ("gram32", "svd"):
        js = tmp_path / f"{method}.json"
        code, _, err = run_cli(capsys, "analyze", str(saved_module), "--mode", "slices",
                               "--ww-compat", "--svd-method", method, "--json", str(js),
                               "--no-progress")
        assert code == 0, err
        tables[method] = {r["layer"]: r for r in json.loads(js.read_text())}
    for layer, row in tables["svd"].items():
        assert row["log_norm"] == pytest.approx(tables["gram32"][layer]["log_norm"], rel=1e-5)
    code, _, err = run_cli(capsys, "analyze", str(saved_module), "--svd-method", "qr")
    assert code == 2 and "--svd-method" in err and err.count("\n") == 1


def test_analyze_operator_mode_needs_an_input_size(capsys, saved_module):
    code, out, err = run_cli(capsys, "analyze", str(saved_module), "--mode", "operator")
    assert code == 2 and err.count("\n") == 1 and "--input-size" in err
    code, out, err = run_cli(capsys, "analyze", str(saved_module), "--mode", "operator",
                             "--input-size", "6", "--no-progress")
    assert code == 0, err


def test_analyze_lightning_checkpoint_with_and_without_class(capsys, tmp_path):
    import lightning.pytorch as pl

    model = SmallCNN()
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    code, out, err = run_cli(capsys, "analyze", str(ckpt), "--no-progress")
    assert code == 0, err
    assert "weights only" in out and "classifier" in out
    code, out, err = run_cli(capsys, "analyze", str(ckpt), "--model-class",
                             "svd_callback.examples:SmallCNN", "--mode", "operator",
                             "--no-progress")
    assert code == 0, err
    assert "weights only" not in out and "features.0" in out


def test_weights_only_model_matches_the_original_spectra():
    from svd_callback import analyze

    model = SmallCNN()
    rebuilt = weights_only_model(model.state_dict())
    a = analyze(model, "slices")
    b = analyze(rebuilt, "slices")
    assert [r.name for r in a] == [r.name for r in b]
    for ra, rb in zip(a, b, strict=True):
        torch.testing.assert_close(ra.svals, rb.svals)


@pytest.mark.parametrize("make_bad, message", [
    (lambda p: p / "missing.ckpt", "no such file"),
    (lambda p: (p / "corrupt.ckpt").write_bytes(b"not a checkpoint") and p / "corrupt.ckpt",
     "cannot read"),
    (lambda p: p, "is a directory"),
    (lambda p: "no_such_torchvision_model", "neither a file nor a torchvision model"),
])
def test_analyze_bad_input_is_one_line_and_nonzero(capsys, tmp_path, make_bad, message):
    code, out, err = run_cli(capsys, "analyze", str(make_bad(tmp_path)))
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def write_tb_run(path, alphas):
    """What the callback writes: analysis k (k epochs completed) at step 10 k with
    epoch = trainer.current_epoch, beside Lightning's own ``epoch`` of the next epoch."""
    writer = SummaryWriter(str(path))
    for epoch, alpha in enumerate(alphas):
        writer.add_scalar("epoch", max(epoch - 1, 0), global_step=10 * epoch)
        if epoch:
            writer.add_scalar("epoch", epoch, global_step=10 * epoch)
        writer.add_scalar("spectral_summary/alpha_mean", alpha, global_step=10 * epoch)
        writer.add_scalar("spectral/alpha/conv1", alpha + 1, global_step=10 * epoch)
        writer.add_scalar("spectral/alpha.operator/conv1", alpha + 2, global_step=10 * epoch)
    writer.close()


def test_parse_tag():
    assert parse_tag("spectral/alpha/features.0") == ("features.0", "alpha", None)
    assert parse_tag("spectral/alpha.slices/fc") == ("fc", "alpha", "slices")
    assert parse_tag("spectral_summary/alpha_mean") == ("<model>", "alpha_mean", None)
    assert parse_tag("train_loss") is None


def test_compare_two_runs_prints_table_and_plot(capsys, tmp_path):
    write_tb_run(tmp_path / "good", [9.0, 5.0, 4.0])
    write_tb_run(tmp_path / "bad", [9.0, 3.0, 1.5])
    run = read_run(tmp_path / "good")
    assert run.series("alpha", layer="conv1", mode="operator").tolist() == [11.0, 7.0, 6.0]
    code, out, err = run_cli(capsys, "compare", str(tmp_path / "good"), str(tmp_path / "bad"),
                             "--metric", "alpha_mean", "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()]
    assert ["epoch"] in lines or any(line[:1] == ["epoch"] for line in lines)
    assert ["2", "4", "1.5"] in lines
    assert (tmp_path / "cmp" / "alpha_mean.png").stat().st_size > 1000


def test_compare_bad_input(capsys, tmp_path):
    code, _, err = run_cli(capsys, "compare", str(tmp_path / "nope"))
    assert code == 2 and "no such directory" in err and err.count("\n") == 1
    writer = SummaryWriter(str(tmp_path / "plain"))
    writer.add_scalar("train_loss", 1.0, 0)
    writer.close()
    code, _, err = run_cli(capsys, "compare", str(tmp_path / "plain"))
    assert code == 2 and "no spectral/ tags" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "compare", str(tmp_path / "empty"))
    assert code == 2 and "neither" in err


def test_tensorboard_and_history_readers_agree_on_a_real_run(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from svd_callback import SpectralMonitor
    from svd_callback.examples import DigitsDataModule
    from svd_callback.runs import _from_events

    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=1,
                         logger=TensorBoardLogger(str(tmp_path), name="run"),
                         callbacks=[SpectralMonitor(figures_every_n=0, histograms=False)],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(SmallCNN(), datamodule=DigitsDataModule())
    root = tmp_path / "run"
    history = read_run(root)
    events = _from_events(root, sorted(root.rglob("events.out.tfevents.*")))
    assert history.source.endswith("spectral_history.jsonl")
    # the conventions text names the primary mode, whose tags carry no mode suffix
    assert events.primary_mode == history.primary_mode == "unfold"
    # TensorBoard gets the mean only (summary_stats) and no constant metrics; the history
    # file keeps every aggregate
    assert events.summary_metrics() == [
        m for m in history.summary_metrics()
        if not m.endswith("_median") and not m.startswith(("rank_loss", "matrix_rank"))]
    assert events.problems == [] and history.problems == []
    expected = history.series("stable_rank", layer="hidden")
    assert list(expected.index) == [0, 1, 2, 3]
    got = events.series("stable_rank", layer="hidden")
    assert list(got.index) == [0, 1, 2, 3]
    assert got.round(4).tolist() == expected.round(4).tolist()


def test_event_reader_purges_what_an_interrupted_run_wrote_after_its_checkpoint(tmp_path):
    """A run killed at step 7 and resumed from its step-4 checkpoint (TensorBoard's purge_step
    marker at 5): every step has one value, the resumed run's."""
    run = tmp_path / "run"
    first = SummaryWriter(str(run))
    for step in range(8):
        first.add_scalar("spectral_summary/alpha_mean", 1.0, step)
    first.close()
    resumed = SummaryWriter(str(run), purge_step=5)
    for step in range(5, 10):
        resumed.add_scalar("spectral_summary/alpha_mean", 2.0, step)
    resumed.close()
    records = read_run(run).records
    steps = records["step"].tolist()
    assert sorted(steps) == list(range(10))  # one value per step, no duplicates
    values = dict(zip(records["step"], records["value"], strict=True))
    assert [values[s] for s in range(10)] == [1.0] * 5 + [2.0] * 5


def test_analyze_metric_flags_select_the_groups_without_a_deprecation(capsys, saved_module,
                                                                       tmp_path):
    import warnings

    from svd_callback.metric_groups import METRIC_GROUPS

    columns = {}
    for flags in ((), ("--mp-fit",), ("--mp-fit", "--traps")):
        js = tmp_path / f"{len(flags)}.json"
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            code, _, err = run_cli(capsys, "analyze", str(saved_module), *flags, "--json",
                                   str(js), "--no-progress")
        assert code == 0, err
        columns[flags] = set(json.loads(js.read_text())[0])
    mp, traps = set(METRIC_GROUPS["mp"]) - {"sigma_mp"}, {"num_traps", "rand_distance"}
    assert not (mp | traps) & columns[()]
    assert mp <= columns[("--mp-fit",)] and not traps & columns[("--mp-fit",)]
    assert mp | traps <= columns[("--mp-fit", "--traps")]


def test_analyze_embeddings_option(capsys, tmp_path):
    """Embedding tables are analysed only with --embeddings; the spectral norm is the table's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(40, 16), nn.Linear(16, 4))
    path = tmp_path / "emb.pt"
    torch.save(model, path)
    js = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "analyze", str(path), "--json", str(js), "--no-progress")
    assert code == 0, err
    rows = {r["layer"]: r for r in json.loads(js.read_text())}
    assert "embeddings are off" in rows["0"]["reason"] and not rows["1"]["reason"]
    code, _, err = run_cli(capsys, "analyze", str(path), "--embeddings", "--json", str(js),
                           "--no-progress")
    assert code == 0, err
    rows = {r["layer"]: r for r in json.loads(js.read_text())}
    assert not rows["0"]["reason"] and not rows["1"]["reason"]
    expected = torch.linalg.matrix_norm(model[0].weight.detach().double(), 2).item()
    assert abs(rows["0"]["spectral_norm"] - expected) <= 1e-5 * expected


def test_analyze_writes_one_esd_figure_per_analysed_record(capsys, saved_module, tmp_path):
    """``--figures`` once crashed with a TypeError after printing the table."""
    from PIL import Image

    out_dir = tmp_path / "figs"
    code, out, err = run_cli(capsys, "analyze", str(saved_module), "--mode", "unfold", "slices",
                             "--figures", str(out_dir), "--no-progress")
    assert code == 0, err
    assert f"wrote figures to {out_dir}" in out
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["esd_slices_0.png", "esd_slices_3.png", "esd_unfold_0.png",
                     "esd_unfold_3.png"]
    with Image.open(out_dir / "esd_unfold_0.png") as image:
        assert image.size[0] >= 800  # a real figure, not an empty file


def test_help_texts_are_plain_and_complete(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "``" not in out and "Exit status" in out
    for command, options in (("demo", ("--epochs", "--seed", "--out", "--mode")),
                             ("analyze", ("--figures", "--mode", "--unsafe-load")),
                             ("compare", ("--metric", "--no-plots"))):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0 and "``" not in out
        text = " ".join(out.split())
        for option in options:  # every option explained, defaults shown
            assert option in text, (command, option)
        assert text.count("default:") >= 2, command
    _, out, _ = run_cli(capsys, "demo", "--help")
    assert "training epochs (default: 8)" in " ".join(out.split())


def _module_only_entry_points() -> list[str]:
    """Every experiment file with a ``__main__`` block that imports the ``experiments``
    package (so it cannot run as a file)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return sorted(str(path.relative_to(root)) for path in (root / "experiments").rglob("*.py")
                  if '__name__ == "__main__"' in (text := path.read_text())
                  and "from experiments" in text)


@pytest.mark.parametrize("entry", _module_only_entry_points())
def test_an_experiment_run_as_a_file_says_how_to_run_it_in_one_line(entry):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, entry, "--help"], cwd=root, capture_output=True,
                            text=True, timeout=60, env={"PATH": "", "PYTHONPATH": ""})
    module = entry.removesuffix(".py").replace("/", ".")
    assert result.returncode == 1
    assert result.stderr.strip() == ("run it from the repository root as a module: "
                                     f"python -m {module}")
