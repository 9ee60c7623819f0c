"""The reads of Lightning's private state (``monitor.trainer_access``) against the installed
Lightning: each private attribute exists where the module looks for it and means what it
assumes, so a Lightning upgrade that moves one fails here."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from svd_callback.examples import DigitsDataModule, SmallCNN
from svd_callback.monitor.trainer_access import validation_loader, validation_settings
from svd_callback.schedule import resolve_check_on

VE = "validation_epoch_end"


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", **kwargs)


def test_validation_settings_read_from_trainers():
    def settings_of(**kwargs):
        trainer = _trainer(**kwargs)
        settings = validation_settings(trainer)
        assert settings.pop("validates") is False  # no data attached (the fits above attach)
        return settings

    assert settings_of() == {"val_check_interval": 1.0, "check_val_every_n_epoch": 1,
                             "time_based": False}
    clock = settings_of(val_check_interval="00:00:00:05")
    assert clock["time_based"] and clock["val_check_interval"] is None  # Lightning sets none
    assert resolve_check_on(None, **clock, validates=True) == VE



class Reads(pl.Callback):
    """What the adapter reads at the start of training."""

    def on_train_start(self, trainer, pl_module):
        loop = trainer.fit_loop.epoch_loop.val_loop
        self.private = (hasattr(trainer, "_val_check_time_interval"),
                        hasattr(loop, "_data_source"))
        self.loader = validation_loader(trainer)


def _fit(datamodule=None, **fit_kwargs) -> Reads:
    reads = Reads()
    _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
             callbacks=[reads]).fit(SmallCNN(), datamodule=datamodule, **fit_kwargs)
    return reads


def test_the_validation_loader_is_the_sources_own():
    data = DigitsDataModule(batch_size=16)
    reads = _fit(data)
    assert reads.private == (True, True)
    assert isinstance(reads.loader, DataLoader) and reads.loader.dataset is data.val_set
    assert not isinstance(reads.loader.sampler, torch.utils.data.DistributedSampler)
    data = DigitsDataModule(batch_size=16)
    data.setup("fit")
    given = DataLoader(data.val_set, batch_size=8)
    reads = _fit(train_dataloaders=DataLoader(data.train_set, batch_size=8),
                 val_dataloaders=given)
    assert reads.loader.dataset is data.val_set and reads.loader.batch_size == 8


def test_no_validation_data_gives_no_loader():
    data = DigitsDataModule(batch_size=16)
    data.setup("fit")
    x, y = data.train_set[0]
    train = DataLoader(TensorDataset(x.unsqueeze(0), torch.as_tensor([y])), batch_size=1)
    assert _fit(train_dataloaders=train).loader is None


def test_suppress_hp_metric_keeps_lightning_from_writing_its_hparams_record(tmp_path):
    """``TensorBoardLogger._default_hp_metric``: with it off, ``log_hyperparams`` without
    metrics writes no ``hp_metric`` scalar and no HPARAMS record (``hparams.yaml`` stays)."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from svd_callback.monitor.trainer_access import suppress_hp_metric

    def written(logger):
        logger.log_hyperparams({"lr": 0.1})
        logger.save()
        logger.experiment.flush()
        acc = EventAccumulator(logger.log_dir)
        acc.Reload()
        try:
            records = sorted(acc.PluginTagToContent("hparams"))
        except KeyError:  # no record of the hparams plugin at all
            records = []
        return acc.Tags()["scalars"], records

    plain = TensorBoardLogger(str(tmp_path), name="plain", version=0)
    assert written(plain) == (["hp_metric"], ["_hparams_/experiment",
                                              "_hparams_/session_end_info",
                                              "_hparams_/session_start_info"])
    quiet = TensorBoardLogger(str(tmp_path), name="quiet", version=0)
    assert suppress_hp_metric(quiet) is True and suppress_hp_metric(quiet) is False
    assert written(quiet) == ([], [])
    assert (tmp_path / "quiet" / "version_0" / "hparams.yaml").is_file()
    assert suppress_hp_metric(object()) is False  # another logger: nothing to do
