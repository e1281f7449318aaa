"""LightningDataModules on Hugging Face ``datasets`` and ``tokenizers``."""

from datamodules.loading import DataError, load_splits
from datamodules.ptb import PTBDataModule

__all__ = ["DataError", "PTBDataModule", "load_splits"]
