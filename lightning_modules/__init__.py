"""LightningModules (one per task) and the ``rnnzoo`` LightningCLI."""

from lightning_modules.classification import ClassificationTask
from lightning_modules.language_model import LanguageModelTask
from lightning_modules.tagging import TaggingTask
from lightning_modules.translation import TranslationTask

__all__ = ["ClassificationTask", "LanguageModelTask", "TaggingTask", "TranslationTask"]
