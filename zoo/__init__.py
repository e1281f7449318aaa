"""rnnzoo's model zoo: recurrent architectures in pure PyTorch and their registry.

Names are imported on first use, so that the torch-free parts (``zoo.tasks``, ``zoo.text``,
``zoo.decoding``) load without torch in the runtime's base install.
"""

import importlib

_MODULE_OF = {
    "GatedCell": "zoo.cells",
    "JordanCell": "zoo.cells",
    "SequenceClassifier": "zoo.classifier",
    "CRF": "zoo.crf",
    "bio_constraints": "zoo.crf",
    "LockedDropout": "zoo.dropout",
    "from_pretrained": "zoo.hub",
    "RNNLanguageModel": "zoo.language_model",
    "generate": "zoo.language_model",
    "MinGRUCell": "zoo.minimal",
    "MinLSTMCell": "zoo.minimal",
    "CELLS": "zoo.recurrent",
    "RecurrentStack": "zoo.recurrent",
    "detach_state": "zoo.recurrent",
    "create_model": "zoo.registry",
    "list_models": "zoo.registry",
    "model_config": "zoo.registry",
    "Seq2Seq": "zoo.seq2seq",
    "SequenceTagger": "zoo.tagger",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
