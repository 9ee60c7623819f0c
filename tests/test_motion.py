"""The ``"motion"`` group: distances and angles between a layer's weights at two analyses,
against dense float64 computations (the oracle), and the callback's use of it."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.loggers import TensorBoardLogger

from svd_callback import SpectralMonitor, analyze
from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.motion import (
    MOTION_METRICS,
    MotionTracker,
    motion_metrics,
    sketch_seed,
    weight_sketch,
)


def exact(now: torch.Tensor, before: torch.Tensor, first: torch.Tensor) -> dict[str, float]:
    """The three metrics from the dense weights in float64."""
    a, b, c = (t.double().flatten() for t in (now, before, first))
    cos = float(a @ b / (a.norm() * b.norm()))
    return {
        "weight_motion": float((a - b).norm() / b.norm()),
        "weight_rotation": math.acos(max(-1.0, min(1.0, cos))),
        "weight_drift": float((a - c).norm() / c.norm()),
    }


def run(tracker: MotionTracker, *weights: torch.Tensor) -> dict[str, float]:
    """Feed ``weights`` in turn as layer "w"; the metrics of the last."""
    for weight in weights:
        values, _ = tracker.update({"w": weight})["w"]
    return values


def test_small_weights_are_kept_whole_and_the_metrics_are_exact():
    torch.manual_seed(0)
    first, before, now = (torch.randn(20, 6) for _ in range(3))
    values = run(MotionTracker(k=8), first, before, now)
    for name, value in exact(now, before, first).items():
        assert values[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    assert torch.equal(weight_sketch(now, k=8), now)


def test_the_sketch_estimates_the_distances_of_a_large_weight():
    torch.manual_seed(1)
    first = torch.randn(256, 1152) * 0.05
    before = first + 0.02 * torch.randn_like(first)  # a full-rank change: stable rank ~ 200
    now = before + 0.01 * torch.randn_like(first)
    values = run(MotionTracker(k=32), first, before, now)
    for name, value in exact(now, before, first).items():
        # relative sd of a squared norm ~ sqrt(2 / (k r)) = 1.8%: 5% is beyond five sd
        assert values[name] == pytest.approx(value, rel=0.05), name


def sketch_tolerance(change: torch.Tensor, k: int, sds: float = 4.0) -> float:
    """``sds`` standard deviations of the relative error of a sketched norm, sqrt(2 / (k r)) / 2
    for a change of stable rank r = ||X||_F^2 / ||X||_2^2 (Gaussian bound)."""
    x = change.double().flatten(1)
    stable_rank = float(x.norm() ** 2 / torch.linalg.matrix_norm(x, ord=2) ** 2)
    return sds * math.sqrt(2.0 / (k * stable_rank)) / 2.0


@pytest.mark.parametrize("rank", [1, 3, 20])
def test_the_sketch_error_stays_within_its_bound_for_low_rank_changes(rank):
    torch.manual_seed(rank)
    before = torch.randn(200, 500) * 0.05
    change = 0.01 * torch.randn(200, rank) @ torch.randn(rank, 500) / math.sqrt(rank)
    now = before + change
    for seed in range(5):  # five Omegas
        got = run(MotionTracker(k=64, seed=seed), before, now)["weight_motion"]
        want = float(change.double().norm() / before.double().norm())
        assert got == pytest.approx(want, rel=sketch_tolerance(change, 64)), seed


def test_a_conv_weight_is_read_as_its_unfolding():
    weight = torch.randn(16, 8, 3, 3)
    seed = sketch_seed("conv", 72)
    assert torch.equal(weight_sketch(weight, 32, seed), weight_sketch(weight.flatten(1), 32, seed))


def test_an_unchanged_weight_reads_exactly_zero_and_a_rescaled_one_rotates_by_zero():
    weight = torch.randn(64, 300)
    values = run(MotionTracker(), weight, weight.clone())  # sketched: 300 > 64 columns
    assert values["weight_motion"] == 0.0 and values["weight_rotation"] == 0.0
    shrunk = run(MotionTracker(), weight, 0.3 * weight)
    assert shrunk["weight_motion"] == pytest.approx(0.7, rel=1e-6)  # float32 0.3 w
    assert shrunk["weight_rotation"] == pytest.approx(0.0, abs=1e-6)
    assert shrunk["weight_drift"] == pytest.approx(0.7, rel=1e-6)


def test_a_rotation_at_constant_norm_moves_while_the_singular_values_stay():
    torch.manual_seed(2)
    weight = torch.randn(48, 20, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.eye(48, dtype=torch.float64) + 0.05 * torch.randn(48, 48,
                                                                                   dtype=torch.float64))
    rotated = q @ weight  # the same singular values, other left singular vectors
    assert torch.allclose(torch.linalg.svdvals(rotated), torch.linalg.svdvals(weight))
    values = run(MotionTracker(k=32), weight.float(), rotated.float())  # 20 columns: exact
    want = exact(rotated.float(), weight.float(), weight.float())
    assert values["weight_motion"] == pytest.approx(want["weight_motion"], rel=1e-9)
    assert values["weight_rotation"] == pytest.approx(want["weight_rotation"], rel=1e-9)
    assert values["weight_motion"] > 0.01


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.floats(0.01, 100.0), st.integers(0, 2 ** 16))
def test_properties_over_shapes_scales_and_seeds(rows, columns, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(rows, columns, generator=generator)
    now = torch.randn(rows, columns, generator=generator)
    values = run(MotionTracker(k=8, seed=seed), first, now)
    rescaled = run(MotionTracker(k=8, seed=seed), first, scale * now)
    assert 0.0 <= values["weight_rotation"] <= math.pi + 1e-12
    assert values["weight_motion"] >= 0.0 and values["weight_drift"] == values["weight_motion"]
    assert rescaled["weight_rotation"] == pytest.approx(values["weight_rotation"], abs=1e-7)


def test_first_sight_zero_weights_and_non_finite_weights_give_nan_with_a_note():
    tracker = MotionTracker(k=4)
    values, notes = tracker.update({"w": torch.zeros(3, 3)})["w"]
    assert all(math.isnan(values[m]) for m in MOTION_METRICS)
    assert notes["weight_motion"] == "first analysis of this layer"
    values, notes = tracker.update({"w": torch.ones(3, 3)})["w"]
    assert math.isnan(values["weight_motion"]) and "zero" in notes["weight_motion"]
    assert math.isnan(values["weight_drift"]) and "zero" in notes["weight_drift"]
    bad = torch.ones(3, 3)
    bad[0, 0] = math.nan
    values, notes = tracker.update({"w": bad})["w"]
    assert all(math.isnan(values[m]) for m in MOTION_METRICS)
    assert "NaN or Inf" in notes["weight_rotation"]
    values, _ = tracker.update({"w": 2 * torch.ones(3, 3)})["w"]  # measured from the last finite
    assert values["weight_motion"] == pytest.approx(1.0)


def test_a_reshaped_layer_starts_afresh():
    tracker = MotionTracker(k=4)
    tracker.update({"w": torch.ones(3, 3)})
    values, notes = tracker.update({"w": torch.ones(4, 3)})["w"]
    assert math.isnan(values["weight_motion"]) and notes["weight_drift"].startswith("first")


def test_state_round_trips_through_a_weights_only_load_and_another_k_starts_afresh(tmp_path):
    torch.manual_seed(3)
    weights = [torch.randn(32, 100) for _ in range(3)]
    tracker = MotionTracker(k=16, seed=5)
    run(tracker, *weights[:2])
    torch.save(tracker.state_dict(), tmp_path / "motion.pt")
    state = torch.load(tmp_path / "motion.pt", weights_only=True)
    restored = MotionTracker(k=16, seed=5)
    restored.load_state_dict(state)
    assert run(restored, weights[2]) == run(tracker, weights[2])
    other = MotionTracker(k=8, seed=5)
    other.load_state_dict(state)
    assert math.isnan(run(other, weights[2])["weight_motion"])
    with pytest.raises(ValueError, match="MotionTracker state"):
        other.load_state_dict({"version": 99})


def test_bad_sketch_sizes_raise():
    for k in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="sketch size"):
            MotionTracker(k=k)
    with pytest.raises(ValueError, match="motion_sketch"):
        SpectralMonitor(motion_sketch=0)


def test_motion_metrics_needs_only_the_sketches():
    a, b = torch.ones(2, 2), 3 * torch.ones(2, 2)
    values, notes = motion_metrics(b, a, None)
    assert values["weight_motion"] == pytest.approx(2.0) and values["weight_rotation"] == 0.0
    assert math.isnan(values["weight_drift"]) and notes["weight_drift"].startswith("first")


def test_analyze_with_a_tracker_gives_motion_in_every_mode():
    model = SmallCNN()
    tracker = MotionTracker()
    first = analyze(model, conv_mode=("unfold", "slices"), motion=tracker)
    assert all(math.isnan(r.metrics["weight_motion"]) for r in first if not r.skipped)
    with torch.no_grad():
        model.features[0].weight.mul_(2.0)
    second = analyze(model, conv_mode=("unfold", "slices"), motion=tracker)
    for record in second:
        moved = record.name == "features.0"
        assert record.metrics["weight_motion"] == pytest.approx(1.0 if moved else 0.0)
        assert record.metrics["weight_rotation"] == pytest.approx(0.0, abs=1e-6)
    assert "weight_motion" not in analyze(model).get("hidden").metrics  # no tracker: not computed


class _PlainSGD(SmallCNN):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_callback_logs_motion_under_the_primary_mode_and_sees_rotation(tmp_path,
                                                                          read_events):
    """Plain SGD at a small rate: the norms barely change while the weights move; a frozen
    layer reads exactly 0."""
    pl.seed_everything(0, verbose=False)
    model = _PlainSGD()
    for parameter in model.hidden.parameters():
        parameter.requires_grad_(False)
    monitor = SpectralMonitor(conv_mode=("unfold", "operator"), histograms=False,
                              figures_every_n=0, metrics=("norms", "motion"))
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = pl.Trainer(max_epochs=2, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[monitor])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    history = monitor.alert_engine.history
    assert len(history) == 3
    for mode in ("unfold", "operator"):
        motion = history.series("features.0", "weight_motion", mode)
        assert math.isnan(motion[0][2]) and all(v > 1e-4 for _, _, v in motion[1:])
        assert [v for _, _, v in history.series("hidden", "weight_motion", mode)[1:]] == [0.0, 0.0]
    norm = history.series("classifier", "frobenius_norm", "unfold")
    moved = history.series("classifier", "weight_motion", "unfold")[-1][2]
    assert moved > 3 * abs(norm[-1][2] / norm[-2][2] - 1)  # moves more than its norm changes
    tags = set(read_events(logger.log_dir).Tags()["scalars"])
    for name in MOTION_METRICS:
        assert f"spectral/{name}/features.0" in tags and f"spectral/{name}/hidden" in tags
        assert not any(t.startswith(f"spectral/{name}.operator/") for t in tags)
    assert "all_layers/weight_motion_mean" in tags
    state = monitor.state_dict()["runner"]["motion"]
    assert set(state["layers"]) == {"features.0", "features.2", "features.5", "hidden",
                                    "classifier"}
