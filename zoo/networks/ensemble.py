"""Ensembles: trained networks of one task and vocabulary that predict as one network.

Each ensemble averages what its task decides from, and offers its members' interface, so it runs
wherever one member does (the task's LightningModule, the decoding loops, the export):

- classifier: the class probabilities;
- tagger: the emission scores and the CRF's transition scores, then one Viterbi;
- language model, translator: every step's next-token probabilities, inside greedy, sampling and
  beam search;
- forecaster: the forecasts.

Averaged probabilities come back as their logarithm, in the place of the logits: a softmax or a
log-softmax of them gives the averaged distribution back, so the callers need no change. An ensemble
of one network, or of one network repeated, predicts exactly what that network predicts.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.networks.classifier import SequenceClassifier
from zoo.networks.crf import CRF
from zoo.networks.forecaster import Forecaster
from zoo.networks.language_model import RNNLanguageModel
from zoo.networks.seq2seq import DecoderState, Memory, Seq2Seq
from zoo.networks.tagger import SequenceTagger


def log_mean_probabilities(logits: list[torch.Tensor]) -> torch.Tensor:
    """log of the mean over members of softmax(logits), along the last axis."""
    log_probabilities = torch.stack([F.log_softmax(member.float(), dim=-1) for member in logits])
    return log_probabilities.logsumexp(0) - math.log(len(logits))


class Ensemble(nn.Module):
    """Members built from their arguments (``members``: one dict per member, as a pretrained folder
    stores them); load their weights with ``load_state_dict`` or ``from_networks``."""

    architecture: type[nn.Module]

    def __init__(self, members: list[dict]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(self.architecture(**arguments) for arguments in members)

    @classmethod
    def from_networks(cls, networks: list[nn.Module], arguments: list[dict]) -> "Ensemble":
        ensemble = cls(arguments)
        for member, network in zip(ensemble.members, networks, strict=True):
            member.load_state_dict(network.state_dict())
        return ensemble.eval()


class ClassifierEnsemble(Ensemble):
    architecture = SequenceClassifier

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """log of the mean class probabilities ``(B, classes)``."""
        return log_mean_probabilities([member(tokens, lengths) for member in self.members])


class MeanCRF(CRF):
    """The CRF whose transition, start and end scores are the mean of the members' CRFs."""

    def __init__(self, members: nn.ModuleList):
        nn.Module.__init__(self)  # no parameters of its own: it reads the members'
        self.num_tags = members[0].crf.num_tags
        self._members = [members]  # in a list, so the members are not registered twice

    def scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        per_member = [member.crf.scores() for member in self._members[0]]
        return tuple(torch.stack(scores).mean(0) for scores in zip(*per_member, strict=True))


class TaggerEnsemble(Ensemble):
    architecture = SequenceTagger

    def __init__(self, members: list[dict]):
        super().__init__(members)
        with_crf = {member.crf is not None for member in self.members}
        if len(with_crf) > 1:
            raise ValueError("tagger ensemble members must all have a CRF or all have none")
        self.crf = MeanCRF(self.members) if with_crf == {True} else None

    def forward(self, tokens, lengths, chars=None, char_lengths=None) -> torch.Tensor:
        """The mean emission scores ``(B, T, num_tags)``."""
        return torch.stack([member(tokens, lengths, chars, char_lengths) for member in self.members]).mean(0)

    # The members' loss and decoding, run with the mean CRF (or none).
    loss = SequenceTagger.loss
    decode = SequenceTagger.decode


class LanguageModelEnsemble(Ensemble):
    architecture = RNNLanguageModel
    char_cnn = None  # members that read characters hold their words already

    @property
    def vocab_size(self) -> int:
        return self.members[0].vocab_size

    def forward(self, tokens: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        """log of the mean next-token probabilities ``(B, T, V)`` and every member's state."""
        states = state if state is not None else (None,) * len(self.members)
        outputs = [member(tokens, member_state) for member, member_state in zip(self.members, states, strict=True)]
        return log_mean_probabilities([logits for logits, _ in outputs]), tuple(s for _, s in outputs)


class Seq2SeqEnsemble(Ensemble):
    """Each member encodes the source; each decoding step averages the members' next-word
    probabilities. The memory and the state are tuples with one member's in each place."""

    architecture = Seq2Seq

    @property
    def attention(self):
        """Attention weights are averaged when every member attends."""
        return self.members[0].attention if all(m.attention is not None for m in self.members) else None

    def encode(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple[tuple[Memory, ...], tuple]:
        encoded = [member.encode(source, lengths) for member in self.members]
        return tuple(memory for memory, _ in encoded), tuple(state for _, state in encoded)

    def decode_step(self, tokens: torch.Tensor, state: tuple, memory: tuple):
        steps = [m.decode_step(tokens, s, mem) for m, s, mem in zip(self.members, state, memory, strict=True)]
        weights = [w for _, _, w in steps]
        mean_weights = None if any(w is None for w in weights) else torch.stack(weights).mean(0)
        return log_mean_probabilities([logits for logits, _, _ in steps]), tuple(s for _, s, _ in steps), mean_weights

    def forward(self, source, lengths, target_in, teacher_forcing: float = 1.0) -> torch.Tensor:
        """log of the mean next-word probabilities ``(B, T, V)`` under teacher forcing."""
        return log_mean_probabilities([member(source, lengths, target_in, teacher_forcing) for member in self.members])

    def select(self, state: tuple[DecoderState, ...], index: torch.Tensor) -> tuple[DecoderState, ...]:
        return tuple(member.select(s, index) for member, s in zip(self.members, state, strict=True))

    def select_memory(self, memory: tuple[Memory, ...], index: torch.Tensor) -> tuple[Memory, ...]:
        return tuple(member.select_memory(m, index) for member, m in zip(self.members, memory, strict=True))


class ForecasterEnsemble(Ensemble):
    """The mean forecast of members trained on the same data (one scaling) that read the same windows."""

    architecture = Forecaster

    def __init__(self, members: list[dict]):
        super().__init__(members)
        first = self.members[0]
        for member in self.members:
            sizes = (member.input_length, member.horizon, member.channels)
            if sizes != (first.input_length, first.horizon, first.channels):
                raise ValueError("forecaster ensemble members must read and forecast the same rows and columns")
        # From the arguments, not the buffers: the network may be built on the meta device (``zoo.storage.pretrained``).
        if len({(tuple(m.get("mean") or ()), tuple(m.get("std") or ())) for m in members}) > 1:
            raise ValueError("forecaster ensemble members must be trained on the same data (the same scaling)")
        self.input_length, self.horizon, self.channels = first.input_length, first.horizon, first.channels

    @property
    def mean(self) -> torch.Tensor:
        return self.members[0].mean

    @property
    def std(self) -> torch.Tensor:
        return self.members[0].std

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(window) for member in self.members]).mean(0)

    forecast = Forecaster.forecast
