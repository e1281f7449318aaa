"""rnnzoo's model zoo: recurrent architectures in pure PyTorch and their registry.

Names are imported on first use, so that the torch-free parts (``zoo.common.tasks``, ``zoo.common.text``,
``zoo.common.decoding``) load without torch in the runtime's base install.
"""

import importlib

_MODULE_OF = {
    "GatedCell": "zoo.cells.loop",
    "JordanCell": "zoo.cells.loop",
    "SequenceClassifier": "zoo.networks.classifier",
    "CRF": "zoo.networks.crf",
    "bio_constraints": "zoo.networks.crf",
    "LockedDropout": "zoo.networks.dropout",
    "from_pretrained": "zoo.storage.hub",
    "RNNLanguageModel": "zoo.networks.language_model",
    "generate": "zoo.networks.language_model",
    "MinGRUCell": "zoo.cells.minimal",
    "MinLSTMCell": "zoo.cells.minimal",
    "CELLS": "zoo.cells.recurrent",
    "RecurrentStack": "zoo.cells.recurrent",
    "detach_state": "zoo.cells.recurrent",
    "create_model": "zoo.storage.registry",
    "list_models": "zoo.storage.registry",
    "model_config": "zoo.storage.registry",
    "Seq2Seq": "zoo.networks.seq2seq",
    "SequenceTagger": "zoo.networks.tagger",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
