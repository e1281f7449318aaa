"""LightningModules (one per task) and the ``rnnzoo`` LightningCLI."""

from lightning_modules.classification import ClassificationTask
from lightning_modules.language_model import LanguageModelTask

__all__ = ["ClassificationTask", "LanguageModelTask"]
