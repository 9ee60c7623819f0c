"""Smoke tests of the experiments' own logic (experiments/common.py, the factorization-rank
choice rule, the shared argument parsing), on synthetic inputs."""

from __future__ import annotations

import torch

from experiments import common
from experiments.factorization_rank import run as fr
from svd_callback import LayerReport, Report
from svd_callback.alerts import AlertEngine, default_rules
from svd_callback.sinks.history_rows import read_analyses, replay_alerts


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
    analyses = read_analyses(_history_rows(series))
    assert [a.epoch for a in analyses] == [0, 1, 2, 3]
    replayed = replay_alerts(analyses, default_rules())
    assert [(a.rule, a.epoch) for a in replayed] == [(a.rule, a.epoch) for a in expected]
    assert {a.rule for a in replayed} == {"AlphaBelow", "MeanAlphaTrend"}


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


def test_chosen_rank_matches_the_library():
    from svd_callback.classes import factorization_rank

    generator = torch.Generator().manual_seed(0)
    factors = [torch.rand(n, 2, generator=generator) for n in (12, 6, 5)]
    tensor = torch.einsum("ir,jr,kr->ijk", *factors)
    result = factorization_rank(tensor, max_rank=4, n_starts=2, n_iter_max=60)
    fits, curve = result.fits.tolist(), result.corcondia.tolist()
    assert fr.chosen_rank(fits, curve, 80.0) == result.rank
    assert fr.chosen_rank(fits, curve, 101.0) is None


def test_the_seeded_parser_gives_the_shared_flags_and_their_defaults(tmp_path):
    from experiments.arguments import seeded_parser

    parser = seeded_parser("d", tmp_path, (0, 1), tmp_path / "derived")
    args = parser.parse_args(["--seeds", "2", "--root", "/data"])
    assert args.seeds == [2] and args.root == "/data"
    assert args.derived == str(tmp_path / "derived")
    assert args.results == str(tmp_path / "RESULTS.md")


def test_command_line_names_an_experiment_by_its_module(monkeypatch):
    script = common.EXPERIMENTS / "rmt_validation" / "run.py"
    monkeypatch.setattr("sys.argv", [str(script), "--config", "a b.yaml"])
    assert common.command_line().endswith(
        ".venv/bin/python -m experiments.rmt_validation.run --config 'a b.yaml'")
