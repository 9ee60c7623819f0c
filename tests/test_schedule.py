"""The analysis schedule, without a Trainer: the hooks are replayed in Lightning's order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svd_callback.monitor.trainer_access import validation_settings
from svd_callback.schedule import Schedule, epochs_trained, resolve_check_on

FS, TS, TE, VE = "fit_start", "train_step", "train_epoch_end", "validation_epoch_end"


def replay(
    schedule: Schedule,
    *,
    epochs: int,
    batches: int,
    val_every: int | None = 1,
    val_points: tuple[int, ...] | None = None,
    sanity: bool = True,
    start_epoch: int = 0,
    resumed: bool = False,
    accumulate: int = 1,
) -> list[tuple[int, str]]:
    """The (global step, trigger) of every analysis, asking ``schedule`` at each hook in the
    order a Lightning 2 fit calls them: sanity-check validation, ``on_train_start``, then per
    batch ``on_train_batch_end`` and the validations due after that batch, and
    ``on_train_epoch_end`` after the epoch's last validation. ``val_every``:
    ``check_val_every_n_epoch`` (None: no validation); ``val_points``: the batches (1-based)
    after which validation runs (default: the last); ``accumulate``: batches per optimizer step
    (``accumulate_grad_batches``; the global step counts optimizer steps, and Lightning steps
    the optimizer at an epoch's last batch too)."""
    val_points = val_points or (batches,)
    done: list[tuple[int, str]] = []

    def analyse(step: int, trigger: str) -> None:
        done.append((step, trigger))
        schedule.record(step)

    steps_per_epoch = -(-batches // accumulate)
    step = start_epoch * steps_per_epoch
    if sanity and val_every is not None:
        assert not schedule.due_at_epoch_end(VE, start_epoch, step, sanity_checking=True)
    if schedule.is_new_run(step, resumed):
        schedule.reset()
    if schedule.due_at_start(step):
        analyse(step, FS)
    for epoch in range(start_epoch, epochs):
        validates = val_every is not None and (epoch + 1) % val_every == 0
        for batch in range(1, batches + 1):
            if batch % accumulate == 0 or batch == batches:
                step += 1
            if schedule.due_at_step(step):
                analyse(step, TS)
            if validates and batch in val_points and schedule.due_at_epoch_end(VE, epoch, step):
                analyse(step, VE)
        if schedule.due_at_epoch_end(TE, epoch, step):
            analyse(step, TE)
    return done


# ---------------------------------------------------------------------------- reference table
# Expected analyses written out by reading SpectralMonitor (on_train_start, on_train_batch_end,
# on_train_epoch_end, on_validation_epoch_end, _epoch_due and the last-step check in _analyse);
# the first three rows are the schedules measured with a real Trainer in tests/test_callback.py.
CASES = [
    # settings, replay options, expected (step, trigger)
    ({}, {"epochs": 2, "batches": 6}, [(0, FS), (6, TE), (12, TE)]),
    ({"every_n_steps": 3, "log_init": False}, {"epochs": 2, "batches": 6},
     [(3, TS), (6, TS), (9, TS), (12, TS)]),
    ({"check_on": VE, "every_n_epochs": 2}, {"epochs": 4, "batches": 6},
     [(0, FS), (12, VE), (24, VE)]),
    ({"every_n_epochs": None}, {"epochs": 3, "batches": 4}, [(0, FS)]),
    ({"every_n_epochs": 0, "log_init": False}, {"epochs": 3, "batches": 4}, []),
    ({"every_n_steps": 4}, {"epochs": 2, "batches": 6},
     [(0, FS), (4, TS), (6, TE), (8, TS), (12, TS)]),
    ({"every_n_epochs": 3}, {"epochs": 7, "batches": 2}, [(0, FS), (6, TE), (12, TE)]),
    # validation every 2nd epoch, schedule every epoch: only the epochs that validate
    ({"check_on": VE}, {"epochs": 4, "batches": 3, "val_every": 2}, [(0, FS), (6, VE), (12, VE)]),
    # validation twice per epoch: each validation of a due epoch analyses
    ({"check_on": VE}, {"epochs": 2, "batches": 6, "val_points": (3, 6)},
     [(0, FS), (3, VE), (6, VE), (9, VE), (12, VE)]),
    ({"check_on": VE, "every_n_epochs": 2}, {"epochs": 2, "batches": 6, "val_points": (3, 6)},
     [(0, FS), (9, VE), (12, VE)]),
    # the validation hook never runs without validation data: nothing after the start
    ({"check_on": VE}, {"epochs": 2, "batches": 3, "val_every": None}, [(0, FS)]),
    # the step schedule meets the validation schedule at the epoch's last batch: once
    ({"check_on": VE, "every_n_steps": 2}, {"epochs": 1, "batches": 4},
     [(0, FS), (2, TS), (4, TS)]),
    # gradient accumulation: on_train_batch_end sees global step 0, then each step twice
    ({"every_n_steps": 1, "log_init": False}, {"epochs": 1, "batches": 4, "accumulate": 2},
     [(1, TS), (2, TS)]),
    ({"every_n_steps": 1}, {"epochs": 2, "batches": 3, "accumulate": 2},
     [(0, FS), (1, TS), (2, TS), (3, TS), (4, TS)]),
    ({"every_n_steps": 2}, {"epochs": 2, "batches": 3, "accumulate": 2},
     [(0, FS), (2, TS), (4, TS)]),
    # the training-epoch hook ignores the validation cadence
    ({}, {"epochs": 2, "batches": 2, "val_every": 2}, [(0, FS), (2, TE), (4, TE)]),
]


@pytest.mark.parametrize(("options", "run", "expected"), CASES)
def test_schedule_reproduces_the_callbacks_decisions(options, run, expected):
    options = {"check_on": TE, **options}
    assert replay(Schedule(**options), **run) == expected


@settings(max_examples=100, deadline=None)
@given(
    every_n_epochs=st.sampled_from([None, 0, 1, 2, 3]),
    every_n_steps=st.sampled_from([None, 0, 1, 2, 3, 5, 7]),
    check_on=st.sampled_from([TE, VE]),
    log_init=st.booleans(),
    val_every=st.sampled_from([1, 2, 3]),
    epochs=st.integers(1, 5),
    batches=st.integers(1, 6),
)
def test_schedule_matches_the_closed_form(
    every_n_epochs, every_n_steps, check_on, log_init, val_every, epochs, batches
):
    """Analyses at step 0 (``log_init``), at every positive multiple of ``every_n_steps``, and
    at the end of every ``every_n_epochs``-th epoch (for the validation hook: of those that
    validate); one step once, the step schedule first."""
    schedule = Schedule(every_n_epochs, every_n_steps, check_on, log_init)
    expected = [(0, FS)] if log_init else []
    for step in range(1, epochs * batches + 1):
        epoch_end = step % batches == 0
        done = step // batches
        if every_n_steps and step % every_n_steps == 0:
            expected.append((step, TS))
        elif (
            epoch_end
            and every_n_epochs
            and done % every_n_epochs == 0
            and (check_on == TE or done % val_every == 0)
        ):
            expected.append((step, check_on))
    got = replay(schedule, epochs=epochs, batches=batches, val_every=val_every)
    assert got == expected
    steps = [s for s, _ in got]
    assert len(steps) == len(set(steps))
    assert schedule.analyses == len(got)
    assert schedule.last_step == (got[-1][0] if got else None)


def test_the_sanity_check_and_other_stages_are_never_analysed():
    schedule = Schedule(check_on=VE)
    assert not schedule.due_at_epoch_end(VE, 0, 0, sanity_checking=True)
    assert not schedule.due_at_epoch_end(VE, 0, 5, fitting=False)  # trainer.validate()
    assert schedule.due_at_epoch_end(VE, 0, 5)
    assert not schedule.due_at_epoch_end(TE, 0, 5)  # not this schedule's hook


def test_an_unresolved_hook_is_a_programming_error_and_resolve_fixes_it():
    schedule = Schedule()
    with pytest.raises(RuntimeError, match="resolve"):
        schedule.due_at_epoch_end(TE, 0, 1)
    hook = schedule.resolve(val_check_interval=0.5, check_val_every_n_epoch=1, validates=True)
    assert hook == schedule.check_on == VE
    assert schedule.resolve(val_check_interval=1.0, check_val_every_n_epoch=1,
                            validates=True) == VE  # a resolved hook stays


def test_a_schedule_from_a_monitor_config_takes_its_four_settings():
    from svd_callback.config import MonitorConfig

    config = MonitorConfig(every_n_epochs=0, every_n_steps=4, check_on=VE, log_init=False)
    schedule = Schedule.from_config(config)
    assert (schedule.every_n_epochs, schedule.every_n_steps) == (None, 4)
    assert (schedule.check_on, schedule.log_init, schedule.analyses) == (VE, False, 0)


# ---------------------------------------------------------------------------- state and resume
def test_resume_continues_without_a_second_initial_analysis_or_a_duplicate():
    """The resume of tests/test_callback.py: 3 epochs of 6 batches, checkpoint at the end of
    the 2nd epoch (after the callback's epoch-end analysis), resumed to 4 epochs."""
    first = Schedule(check_on=TE)
    checkpoint = None
    done = []
    for epochs in range(1, 4):  # the state saved after each epoch, as a checkpoint would be
        done += replay(first, epochs=epochs, batches=6, start_epoch=epochs - 1,
                       resumed=epochs > 1, sanity=False)
        if epochs == 2:
            checkpoint = first.state_dict()
    assert [s for s, _ in done] == [0, 6, 12, 18]
    assert checkpoint == {"analyses": 3, "last_step": 12}

    second = Schedule(check_on=TE)
    second.load_state_dict(checkpoint)
    resumed = replay(second, epochs=4, batches=6, start_epoch=2, resumed=True)
    assert resumed == [(18, TE), (24, TE)]
    assert second.state_dict() == {"analyses": 5, "last_step": 24}


def test_a_checkpoint_taken_at_step_zero_is_not_analysed_again():
    schedule = Schedule(check_on=TE)
    schedule.load_state_dict({"analyses": 1, "last_step": 0})
    assert not schedule.is_new_run(0, resumed=True)
    assert not schedule.due_at_start(0)
    assert replay(schedule, epochs=1, batches=2, resumed=True) == [(2, TE)]


def test_the_same_object_fitted_again_from_scratch_starts_afresh():
    schedule = Schedule(check_on=TE)
    assert replay(schedule, epochs=1, batches=3) == [(0, FS), (3, TE)]
    assert schedule.is_new_run(0, resumed=False)
    assert not schedule.is_new_run(0, resumed=True)
    assert replay(schedule, epochs=1, batches=3) == [(0, FS), (3, TE)]
    assert schedule.analyses == 2


def test_state_dict_round_trips_and_leaves_the_settings_alone():
    import io

    import torch

    schedule = Schedule(every_n_epochs=2, every_n_steps=5, check_on=VE, log_init=False)
    schedule.record(10)
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    restored = Schedule(every_n_epochs=3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert (restored.analyses, restored.last_step) == (1, 10)
    assert (restored.every_n_epochs, restored.every_n_steps, restored.check_on) == (3, None, None)
    assert restored.done_at(10) and not restored.done_at(11)
    fresh = Schedule()
    fresh.load_state_dict(Schedule().state_dict())
    assert fresh.last_step is None and not fresh.done_at(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"every_n_epochs": -1}, "every_n_epochs.*-1"), ({"every_n_steps": 1.5}, "every_n_steps"),
     ({"check_on": "on_epoch_end"}, "check_on must be one of 'train_epoch_end', "
      "'validation_epoch_end' or None, got 'on_epoch_end'"),
     ({"log_init": "true"}, "log_init must be True or False")],
)
def test_bad_settings_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)


# ---------------------------------------------------------------------------- epochs trained
@pytest.mark.parametrize(
    ("trigger", "epoch", "done", "batches", "expected"),
    [
        (FS, 3, 2, 6, 0.0),
        (TE, 1, 6, 6, 2.0),
        (TS, 0, 3, 6, 0.5),  # tests/test_callback.py: step 3 of 6-batch epochs
        (TS, 1, 6, 6, 2.0),
        (VE, 2, 3, 6, 2.5),
        (VE, 1, 8, 6, 2.0),  # clipped
        (TS, 1, -1, 6, 1.0),
        (TS, 1, 3, math.inf, 1.0),  # an iterable dataset without a length
        (TS, 1, 3, 0, 1.0),
        (TS, 1, None, 6, 1.0),  # no batch progress
        (TS, 1, 3, "6", 1.0),
    ],
)
def test_epochs_trained(trigger, epoch, done, batches, expected):
    assert epochs_trained(trigger, epoch, done, batches) == expected


# ---------------------------------------------------------------------------- hook resolution
@pytest.mark.parametrize(
    ("check_on", "interval", "every", "validates", "time_based", "expected"),
    [
        (None, 1.0, 1, True, False, TE),  # Lightning's defaults
        (None, 0.25, 1, True, False, VE),
        (None, 50, 1, True, False, VE),  # every 50 batches
        (None, 1.0, 2, True, False, VE),
        (None, 100, None, True, False, VE),  # by steps across epochs
        (None, 1.0, 1, True, True, VE),  # on a clock
        (None, None, 1, True, True, VE),
        (None, 0.25, 3, False, False, TE),  # no validation: the validation hook never runs
        (VE, 1.0, 1, True, False, VE),
        (VE, 1.0, 1, False, False, VE),  # the user's choice stands
        (TE, 0.5, 2, True, False, TE),
    ],
)
def test_resolve_check_on(check_on, interval, every, validates, time_based, expected):
    assert resolve_check_on(check_on, val_check_interval=interval, check_val_every_n_epoch=every,
                            validates=validates, time_based=time_based) == expected


def test_resolve_check_on_refuses_an_unknown_hook():
    with pytest.raises(ValueError, match="check_on must be one of.*'epoch_end'"):
        resolve_check_on("epoch_end", val_check_interval=1.0, check_val_every_n_epoch=1,
                         validates=True)


@pytest.mark.parametrize(
    "trainer_kwargs",
    [{}, {"val_check_interval": 0.5}, {"val_check_interval": 3},
     {"check_val_every_n_epoch": 2}, {"check_val_every_n_epoch": None, "val_check_interval": 4}],
)
def test_resolution_agrees_with_early_stopping_on_real_trainers(trainer_kwargs):
    """Lightning's EarlyStopping resolves ``check_on_train_epoch_end`` in ``setup()``; with
    validation running, the resolved hook is the one it checks at."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", **trainer_kwargs)
    stopping = EarlyStopping(monitor="all_layers/alpha_mean")
    stopping.setup(trainer, None, "fit")  # type: ignore[arg-type]
    lightning_hook = TE if stopping._check_on_train_epoch_end else VE
    ours = resolve_check_on(None, val_check_interval=trainer.val_check_interval,
                            check_val_every_n_epoch=trainer.check_val_every_n_epoch,
                            validates=True)
    assert ours == lightning_hook


# ---------------------------------------------------------------------------- the replay itself
@pytest.mark.parametrize(
    ("options", "trainer_kwargs", "run"),
    [
        ({"every_n_steps": 2}, {"accumulate_grad_batches": 2, "limit_train_batches": 5},
         {"batches": 5, "accumulate": 2}),
        ({"check_on": None, "every_n_steps": 3}, {"val_check_interval": 0.5},
         {"batches": 4, "val_points": (2, 4)}),
        ({"check_on": None}, {"check_val_every_n_epoch": 2}, {"batches": 4, "val_every": 2}),
        ({"check_on": None}, {"limit_val_batches": 0}, {"batches": 3, "val_every": None}),
    ],
)
def test_the_replay_calls_the_schedule_as_a_real_fit_does(options, trainer_kwargs, run):
    """A callback that asks a Schedule at Lightning's hooks, resolved in ``setup()`` from the
    trainer, takes the decisions ``replay`` takes for the same fit (3 epochs, tiny model)."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 2)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Asks(pl.Callback):
        def __init__(self, schedule: Schedule) -> None:
            self.schedule, self.done = schedule, []

        def _analyse(self, trainer, trigger):
            self.done.append((trainer.global_step, trigger))
            self.schedule.record(trainer.global_step)

        def setup(self, trainer, pl_module, stage):
            self.schedule.resolve(**validation_settings(trainer))

        def on_train_start(self, trainer, pl_module):
            if self.schedule.due_at_start(trainer.global_step):
                self._analyse(trainer, FS)

        def on_train_batch_end(self, trainer, *args):
            if self.schedule.due_at_step(trainer.global_step):
                self._analyse(trainer, TS)

        def on_train_epoch_end(self, trainer, pl_module):
            if self.schedule.due_at_epoch_end(TE, trainer.current_epoch, trainer.global_step):
                self._analyse(trainer, TE)

        def on_validation_epoch_end(self, trainer, pl_module):
            if self.schedule.due_at_epoch_end(
                VE, trainer.current_epoch, trainer.global_step,
                sanity_checking=trainer.sanity_checking,
                fitting=trainer.state.fn == "fit",
            ):
                self._analyse(trainer, VE)

    data = TensorDataset(torch.randn(run["batches"] * 2, 3))
    spy = Asks(Schedule(**options))
    pl.Trainer(
        accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
        callbacks=[spy], **{"limit_val_batches": 1, **trainer_kwargs},
    ).fit(Tiny(), DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
    check_on = spy.schedule.check_on
    expected = replay(Schedule(**{**options, "check_on": check_on}), epochs=3, **run)
    assert spy.done == expected
    assert len(expected) >= 2
