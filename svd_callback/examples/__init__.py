"""Example models and data modules used by the demo, the configs and the experiments."""

from svd_callback.examples.data import (
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
)
from svd_callback.examples.models import SmallCNN

__all__ = ["DigitsDataModule", "FashionMNISTDataModule", "ImageFolderDataModule", "SmallCNN"]
