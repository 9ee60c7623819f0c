"""Train any LightningModule / LightningDataModule pair from a LightningCLI YAML config.

    .venv/bin/python -m experiments.train fit --config configs/digits_cnn.yaml
    .venv/bin/python -m experiments.train fit --config configs/fashion_mnist_cnn.yaml \
        --data.init_args.root /path/to/fashion-mnist

The configs attach ``svd_callback.SpectralMonitor`` as a trainer callback; any of its arguments
can be overridden on the command line (``--trainer.callbacks+=...`` or by editing the YAML).
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Parse ``args`` (default: the command line) and, with ``run``, execute the subcommand."""
    return LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
