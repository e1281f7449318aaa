"""LightningDataModules on Hugging Face ``datasets`` and ``tokenizers``."""

from datamodules.conll import CoNLLDataModule
from datamodules.ett import ETTDataModule
from datamodules.loading import DataError, load_splits
from datamodules.ptb import PTBDataModule
from datamodules.text_classification import IMDBDataModule
from datamodules.translation import TranslationDataModule

__all__ = [
    "CoNLLDataModule",
    "DataError",
    "ETTDataModule",
    "IMDBDataModule",
    "PTBDataModule",
    "TranslationDataModule",
    "load_splits",
]
