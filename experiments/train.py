"""Train any LightningModule / LightningDataModule pair from a LightningCLI YAML config.

    .venv/bin/python -m experiments.train fit --config configs/digits_cnn.yaml
    .venv/bin/python -m experiments.train fit --config configs/fashion_mnist_cnn.yaml \
        --data.init_args.root /path/to/fashion-mnist

The configs attach ``svd_callback.SpectralMonitor`` as a trainer callback; any of its arguments
can be overridden on the command line (``--trainer.callbacks+=...`` or by editing the YAML).
A Fashion-MNIST data module whose root lacks the files stops the run before the subcommand,
with a one-line instruction and exit status 2.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: say how instead
    raise SystemExit("run it from the repository root as a module: "
                     "python -m experiments.train")

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from experiments.data_check import require_fashion_mnist
from svd_callback.examples import FashionMNISTDataModule


class CheckedCLI(LightningCLI):
    """LightningCLI that checks a Fashion-MNIST data module's files before any subcommand."""

    def _check_data(self) -> None:
        if isinstance(self.datamodule, FashionMNISTDataModule):
            require_fashion_mnist(self.datamodule.root)

    def before_fit(self) -> None:  # noqa: D102
        self._check_data()

    def before_validate(self) -> None:  # noqa: D102
        self._check_data()

    def before_test(self) -> None:  # noqa: D102
        self._check_data()

    def before_predict(self) -> None:  # noqa: D102
        self._check_data()


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Parse ``args`` (default: the command line) and, with ``run``, execute the subcommand."""
    return CheckedCLI(
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
