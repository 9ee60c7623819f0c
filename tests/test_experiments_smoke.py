"""Smoke tests of the experiments' own logic (experiments/common.py, the healthy_vs_broken
evaluation and rule, the factorization-rank choice rule), on synthetic inputs and one tiny
training run on digits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from experiments import common
from experiments.factorization_rank import run as fr
from experiments.healthy_vs_broken import rules
from experiments.healthy_vs_broken import run as hvb
from svd_callback import LayerReport, Report
from svd_callback.alerts import AlertEngine, default_rules


@pytest.mark.parametrize(
    ("losses", "turn", "rise"),
    [
        ([2.3, 1.0, 0.5, 0.4, 0.3, 0.2], None, None),  # falls throughout: censored
        ([2.3, 1.0, 0.8, 0.9, 0.7, 0.6, 0.5], None, 2),  # a one-epoch bump is not a turn
        ([2.3, 1.0, 0.8, 0.9, 0.85, 0.8, 0.7], 2, 2),  # equal to the best is not an improvement
        ([2.3, 2.4, 2.3, 2.35, 1.0], 0, 0),  # the first 3 epochs did not help
        ([2.3, 1.0, math.nan, math.nan, math.nan], 1, 1),  # NaN counts as a rise
        ([2.3, 1.0, 0.9, 1.1, 1.2], None, 2),  # rise too close to the end: censored
        ([2.3], None, None),
    ],
)
def test_val_loss_turn(losses, turn, rise):
    assert common.val_loss_turn(losses)[0] == turn
    assert common.first_rise(losses) == rise


def test_in_time_window():
    assert hvb.in_time(3, 2) and hvb.in_time(0, 0) and not hvb.in_time(4, 2)
    assert hvb.in_time(9, None) and not hvb.in_time(None, 2)


def _report(alpha: float, norm: float) -> Report:
    return Report([LayerReport("fc", "linear", "unfold",
                               metrics={"alpha": alpha, "frobenius_norm": norm})])


def _history_rows(series: list[tuple[float, float]]) -> list[dict]:
    rows = [{"type": "run", "step": 0, "epoch": 0}]
    for epoch, (alpha, norm) in enumerate(series):
        rows.append({"type": "layer", "epoch": epoch, "step": 10 * epoch, "layer": "fc",
                     "kind": "linear", "mode": "unfold",
                     "metrics": {"alpha": alpha, "frobenius_norm": norm},
                     "reason": None, "quality": None})
        rows.append({"type": "summary", "epoch": epoch, "step": 10 * epoch, "mode": "unfold",
                     "metrics": {"alpha_mean": alpha, "n_layers": 1.0}})
    return rows


def test_replay_matches_a_live_engine():
    series = [(3.0, 1.0), (1.8, 1.5), (1.7, 1.5), (1.6, 2.0)]
    live = AlertEngine(default_rules())
    expected = []
    for epoch, (alpha, norm) in enumerate(series):
        expected += live.update(epoch, 10 * epoch, _report(alpha, norm), {"alpha_mean": alpha})
    analyses = common.history_analyses(_history_rows(series))
    assert [a["epoch"] for a in analyses] == [0, 1, 2, 3]
    replayed = common.replay_alerts(analyses, default_rules())
    assert [(a.rule, a.epoch) for a in replayed] == [(a.rule, a.epoch) for a in expected]
    assert {a.rule for a in replayed} == {"AlphaBelow", "MeanAlphaTrend"}


def test_stalled_layer_rule():
    engine = AlertEngine([rules.StalledLayer()])
    fired = []
    # epoch 1 moved; epoch 2 unchanged (fires once); epoch 3 unchanged (no repeat); 4 moved
    for epoch, norm in enumerate([1.0, 1.2, 1.2, 1.2, 1.3, 1.3]):
        fired += [(a.epoch, a.layer) for a in engine.update(epoch, epoch, _report(3.0, norm))]
    assert fired == [(2, "fc"), (5, "fc")]
    # a norm that is unchanged from init at epoch 1 counts (a frozen layer)
    engine = AlertEngine([rules.StalledLayer()])
    alerts = [engine.update(e, e, _report(3.0, 1.0)) for e in range(2)]
    assert alerts[0] == [] and [a.rule for a in alerts[1]] == ["StalledLayer"]


def test_evaluate_precision_recall_and_criteria():
    def run(alphas, losses):
        norms = [1.0 + 0.1 * k for k in range(len(alphas))]
        return {"analyses": common.history_analyses(_history_rows(list(zip(alphas, norms,
                                                                              strict=True)))),
                "epochs": [{"epoch": k, "val_loss": v} for k, v in enumerate(losses)]}

    runs = {
        "good": run([3, 3, 3, 3, 3], [2.0, 1.0, 0.8, 0.7, 0.6]),
        "early": run([3, 1.5, 1.5, 1.5, 1.5], [2.0, 1.0, 1.1, 1.2, 1.3]),  # AlphaBelow at 2, turn 1
        "late": run([3, 3, 3, 3, 1.5], [2.0, 2.1, 2.2, 2.3, 2.4]),  # turn 0, no alert by 1
    }
    result = hvb.evaluate(runs, ["good"], "default")
    assert result["per_run"]["early"]["turn"] == 1
    assert result["per_run"]["late"]["turn"] == 0
    assert result["per_rule"]["AlphaBelow"]["fired"] == {"early": 2}
    assert result["per_rule"]["AlphaBelow"]["precision"] == 1.0
    assert result["per_rule"]["AlphaBelow"]["recall_in_time"] == 0.5
    assert result["per_rule"]["AlphaBelow"]["leads"] == {"early": "-1"}
    assert result["criteria"]["broken_in_time"] == {"early": True, "late": False}
    assert result["criteria"]["healthy_no_stop"] == {"good": True}


def test_write_results_keeps_hand_written_text(tmp_path):
    path = tmp_path / "RESULTS.md"
    common.write_results(path, "Title", "numbers v1")
    text = path.read_text().replace(common.END_MARK, common.END_MARK + "\n\nDiscussion.")
    path.write_text(text)
    common.write_results(path, "Title", "numbers v2")
    text = path.read_text()
    assert "numbers v2" in text and "numbers v1" not in text and "Discussion." in text
    assert text.startswith("# Title")


def test_write_results_keeps_a_protocol_written_before_the_markers_existed(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Title\n\n## Protocol (written before the runs)\n\nSeeds 0-4.\n")
    common.write_results(path, "Title", "numbers v1")
    text = path.read_text()
    assert text.startswith("# Title\n\n## Protocol") and "Seeds 0-4." in text
    assert text.index("Seeds 0-4.") < text.index(common.BEGIN_MARK) < text.index("numbers v1")
    common.write_results(path, "Title", "numbers v2")
    text = path.read_text()
    assert "Seeds 0-4." in text and "numbers v2" in text and "numbers v1" not in text


def test_partly_frozen_cnn_freezes_only_the_named_layer():
    model = common.PartlyFrozenCNN(frozen=["features.2"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"features.2.weight", "features.2.bias"}
    optimizer = model.configure_optimizers()
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="no module named"):
        common.PartlyFrozenCNN(frozen=["nope"])


def test_chosen_rank_matches_the_library():
    from svd_callback.classes import factorization_rank

    generator = torch.Generator().manual_seed(0)
    factors = [torch.rand(n, 2, generator=generator) for n in (12, 6, 5)]
    tensor = torch.einsum("ir,jr,kr->ijk", *factors)
    result = factorization_rank(tensor, max_rank=4, n_starts=2, n_iter_max=60)
    fits, curve = result.fits.tolist(), result.corcondia.tolist()
    assert fr.chosen_rank(fits, curve, 80.0) == result.rank
    assert fr.chosen_rank(fits, curve, 101.0) is None


def test_tiny_run_history_replays_to_the_online_alerts(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from svd_callback.callback import SpectralMonitor

    torch.manual_seed(0)
    datamodule = common.make_datamodule("digits", batch_size=128, seed=0, limit=256)
    model = common.PartlyFrozenCNN(frozen=["features.2"], width=8, hidden=16)
    monitor = SpectralMonitor(metrics="all", stop_on_alert=False, figures_every_n=0,
                              histograms=False, alert_rules=rules.experiment_rules())
    recorder = common.EpochRecorder()
    logger = TensorBoardLogger(str(tmp_path), name="tiny", version="")
    common.trainer_for(2, [monitor, recorder], logger=logger).fit(model, datamodule=datamodule)
    assert [row["epoch"] for row in recorder.rows] == [0, 1, 2]
    assert all(math.isfinite(row["val_loss"]) for row in recorder.rows)
    history = common.history_analyses(
        common.read_history_file(Path(logger.log_dir) / "spectral_history.jsonl"))
    replayed = common.replay_alerts(history, rules.experiment_rules())
    online = [a.to_dict() for a in monitor.alert_engine.alerts_so_far]
    assert hvb.same_alerts(online, replayed)
    stalled = [a for a in replayed if a.rule == "StalledLayer"]
    assert {a.layer for a in stalled} == {"features.2"} and stalled[0].epoch == 1


def test_config_file_sets_defaults_and_the_command_line_wins(tmp_path):
    from experiments.arguments import experiment_parser, parse_with_config

    config = tmp_path / "c.yaml"
    config.write_text("epochs: 9\ntrain-size: 17\nruns: {good: {}}\n")
    parser = experiment_parser("d", tmp_path, train_size=1, val_size=2, epochs=3)
    args, extra = parse_with_config(parser, ["--config", str(config), "--epochs", "4"],
                                    extra=("runs",))
    assert (args.epochs, args.train_size, args.val_size) == (4, 17, 2)
    assert extra == {"runs": {"good": {}}}
    assert args.out == str(tmp_path / "runs") and args.results == str(tmp_path / "RESULTS.md")


def test_command_line_names_an_experiment_by_its_module(monkeypatch):
    script = common.EXPERIMENTS / "rmt_validation" / "run.py"
    monkeypatch.setattr("sys.argv", [str(script), "--config", "a b.yaml"])
    assert common.command_line().endswith(
        ".venv/bin/python -m experiments.rmt_validation.run --config 'a b.yaml'")
