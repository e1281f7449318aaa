"""Many-to-many: a stacked bidirectional recurrent tagger (NER, POS, chunking) with a CRF option."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from zoo.crf import CRF, bio_constraints
from zoo.dropout import make_dropout
from zoo.pooling import last_layer_state
from zoo.recurrent import CellType, Nonlinearity, RecurrentInit, RecurrentStack
from zoo.text import IGNORE_INDEX


class CharWordEncoder(nn.Module):
    """A word's characters -> one vector: a BiLSTM over the characters, final states (Lample et al. 2016)."""

    def __init__(self, char_vocab_size: int, char_embedding_dim: int = 30, char_hidden_size: int = 25):
        super().__init__()
        self.embedding = nn.Embedding(char_vocab_size, char_embedding_dim)
        self.rnn = RecurrentStack(char_embedding_dim, char_hidden_size, cell="lstm", bidirectional=True)
        self.output_size = self.rnn.output_size

    def forward(self, chars: torch.Tensor, char_lengths: torch.Tensor) -> torch.Tensor:
        """``chars`` ``(B, T, W)``, ``char_lengths`` ``(B, T)`` -> ``(B, T, output_size)``."""
        batch, steps, width = chars.shape
        # Padding words have no characters; give them one (pad) so packing accepts them.
        _, state = self.rnn(self.embedding(chars.view(-1, width)), lengths=char_lengths.view(-1).clamp(min=1))
        return last_layer_state(state, 2).view(batch, steps, -1)


class SequenceTagger(nn.Module):
    """Word embedding (+ character features) -> stacked BiRNN -> per-token tag scores -> softmax or CRF.

    Args:
        vocab_size: word vocabulary size.
        labels: tag names; with ``output="crf"`` and IOB2 names, invalid transitions (``O -> I-PER``)
            are forbidden in training and decoding.
        char_vocab_size: > 0 adds character-level BiLSTM word features.
        output: ``softmax`` (independent per-token decisions) or ``crf`` (Viterbi over the sentence).
        recurrent_init, nonlinearity: of the word-level stack (see ``RecurrentStack``); the character
            encoder keeps torch's initialisation.
    """

    def __init__(
        self,
        vocab_size: int,
        labels: list[str],
        embedding_dim: int = 100,
        hidden_size: int = 200,
        num_layers: int = 2,
        cell: CellType = "lstm",
        dropout: float = 0.5,
        locked_dropout: bool = False,
        residual: bool = False,
        char_vocab_size: int = 0,
        char_embedding_dim: int = 30,
        char_hidden_size: int = 25,
        output: Literal["softmax", "crf"] = "crf",
        recurrent_init: RecurrentInit = "default",
        nonlinearity: Nonlinearity = "tanh",
    ):
        super().__init__()
        if output not in ("softmax", "crf"):
            raise ValueError(f"output must be 'softmax' or 'crf', got {output!r}")
        self.labels = list(labels)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.chars = CharWordEncoder(char_vocab_size, char_embedding_dim, char_hidden_size) if char_vocab_size else None
        input_size = embedding_dim + (self.chars.output_size if self.chars else 0)
        self.dropout = make_dropout(dropout, locked_dropout)
        self.rnn = RecurrentStack(
            input_size,
            hidden_size,
            num_layers,
            cell,
            True,
            dropout,
            locked_dropout,
            residual,
            recurrent_init,
            nonlinearity,
        )
        self.emissions = nn.Linear(self.rnn.output_size, len(labels))
        self.crf = CRF(len(labels), *bio_constraints(self.labels)) if output == "crf" else None

    def forward(self, tokens, lengths, chars=None, char_lengths=None) -> torch.Tensor:
        """Tag scores ``(B, T, num_tags)`` for padded ``tokens`` ``(B, T)`` of ``lengths`` ``(B,)``."""
        x = self.embedding(tokens)
        if self.chars is not None:
            if chars is None:
                raise ValueError("this tagger uses character features: pass chars and char_lengths")
            x = torch.cat([x, self.chars(chars, char_lengths)], dim=-1)
        outputs, _ = self.rnn(self.dropout(x), lengths=lengths)
        return self.emissions(self.dropout(outputs))

    def loss(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CRF negative log-likelihood (mean over sentences) or token cross-entropy (mean over tokens)."""
        if self.crf is not None:
            return self.crf(emissions, tags, mask)
        return F.cross_entropy(emissions.flatten(0, 1), tags.masked_fill(~mask, IGNORE_INDEX).flatten())

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Best tag ids ``(B, T)`` (Viterbi with the CRF, argmax without); 0 at padding."""
        if self.crf is not None:
            return self.crf.decode(emissions, mask)
        return emissions.argmax(-1).masked_fill(~mask, 0)
