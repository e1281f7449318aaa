"""rnnzoo's model zoo: recurrent architectures in pure PyTorch and their registry."""

from zoo.cells import GatedCell, JordanCell
from zoo.classifier import SequenceClassifier
from zoo.crf import CRF, bio_constraints
from zoo.dropout import LockedDropout
from zoo.hub import from_pretrained
from zoo.language_model import RNNLanguageModel, generate, sample_next
from zoo.recurrent import CELLS, RecurrentStack, detach_state
from zoo.registry import create_model, list_models, model_config
from zoo.seq2seq import Seq2Seq
from zoo.tagger import SequenceTagger

__all__ = [
    "CELLS",
    "CRF",
    "Seq2Seq",
    "SequenceClassifier",
    "SequenceTagger",
    "bio_constraints",
    "GatedCell",
    "JordanCell",
    "LockedDropout",
    "RNNLanguageModel",
    "RecurrentStack",
    "create_model",
    "detach_state",
    "from_pretrained",
    "generate",
    "list_models",
    "model_config",
    "sample_next",
]
