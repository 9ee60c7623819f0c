"""Example models and data modules used by the demo, the configs and the experiments."""

from svd_callback.examples.data import (
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
)
from svd_callback.examples.models import Classifier, ResNet, SmallCNN

__all__ = [
    "Classifier",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "ResNet",
    "SmallCNN",
]
