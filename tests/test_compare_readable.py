"""``svd-callback compare`` read at a glance: runs named by their shortest distinct path,
plots that name the conv mode, mark alerts and tick whole epochs."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.image import imread
from torch.utils.tensorboard import SummaryWriter

from svd_callback.cli import comparison_figure, main
from svd_callback.runs import distinct_names, read_run


def test_distinct_names_are_the_shortest_distinct_path_suffixes(tmp_path):
    a = tmp_path / "a" / "lightning_logs" / "version_0"
    b = tmp_path / "b" / "lightning_logs" / "version_0"
    c = tmp_path / "b" / "lightning_logs" / "version_1"
    assert distinct_names([a, b]) == ["a/lightning_logs/version_0", "b/lightning_logs/version_0"]
    assert distinct_names([a, c]) == ["version_0", "version_1"]
    assert distinct_names([a, b, c]) == ["a/lightning_logs/version_0",
                                         "b/lightning_logs/version_0", "version_1"]
    assert distinct_names([tmp_path / "runs" / "x"]) == ["x"]
    assert distinct_names([a, a]) == ["version_0", "version_0#2"]


def _write_run(path, alphas, alert_epochs):
    """The callback's tags: analysis k at step 10 k, Lightning's epoch beside it."""
    writer = SummaryWriter(str(path))
    for epoch, alpha in enumerate(alphas):
        writer.add_scalar("epoch", max(epoch - 1, 0), global_step=10 * epoch)
        writer.add_scalar("spectral_summary/alpha_mean", alpha, global_step=10 * epoch)
        writer.add_scalar("alerts/count", float(epoch in alert_epochs), global_step=10 * epoch)
    writer.close()


def test_compare_names_lightning_runs_apart_and_plots_modes_alerts_and_whole_epochs(
    capsys, tmp_path
):
    first = tmp_path / "a" / "version_0"
    second = tmp_path / "b" / "version_0"
    _write_run(first, [9.0, 5.0, 4.0, 3.5, 3.0], alert_epochs={3})
    _write_run(second, [9.0, 3.0, 1.5, 1.2, 1.0], alert_epochs={2, 4})
    code = main(["compare", str(first), str(second), "--metric", "alpha_mean",
                 "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert code == 0
    assert "a/version_0" in out and "b/version_0" in out and "#2" not in out
    image = imread(tmp_path / "cmp" / "alpha_mean.png")
    assert image.shape[1] >= 800

    runs = {"a/version_0": read_run(first), "b/version_0": read_run(second)}
    assert runs["b/version_0"].alert_epochs() == [2, 4]
    table = pd.DataFrame({name: run.series("alpha_mean") for name, run in runs.items()})
    fig = comparison_figure(table, "alpha_mean", runs, None)
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 4]
    assert ticks and all(float(t).is_integer() for t in ticks)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "a/version_0 (mode primary)" in labels
    assert "alert raised at this epoch" in labels
    crosses = sorted(tuple(p) for c in ax.collections for p in c.get_offsets())
    assert crosses == [(2.0, 1.5), (3.0, 3.5), (4.0, 1.0)]  # (epoch, that run's value)
    assert "primary conv mode" in ax.get_title()
    plt.close(fig)
