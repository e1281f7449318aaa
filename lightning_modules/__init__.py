"""LightningModules (one per task) and the ``rnnzoo`` command.

The tasks are imported on first use, so that ``rnnzoo serve`` (``lightning_modules.cli``) runs
without torch.
"""

import importlib

_TASK_MODULES = {
    "ClassificationTask": "lightning_modules.classification",
    "LanguageModelTask": "lightning_modules.language_model",
    "TaggingTask": "lightning_modules.tagging",
    "TranslationTask": "lightning_modules.translation",
}
__all__ = list(_TASK_MODULES)


def __getattr__(name: str):
    if name in _TASK_MODULES:
        return getattr(importlib.import_module(_TASK_MODULES[name]), name)
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
