"""Many-to-many: a stacked bidirectional recurrent tagger (NER, POS, chunking) with a CRF option."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from zoo.cells.recurrent import Block, CellType, Nonlinearity, RecurrentInit, RecurrentStack, StackConfig
from zoo.common.text import IGNORE_INDEX
from zoo.networks.crf import CRF, bio_constraints
from zoo.networks.dropout import make_dropout
from zoo.networks.pooling import last_layer_state


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


class CharConvWordEncoder(nn.Module):
    """A word's characters -> one vector: a convolution over the characters, max over the word's
    positions (Ma & Hovy 2016: 30 filters of width 3)."""

    def __init__(self, char_vocab_size: int, char_embedding_dim: int = 30, filters: int = 30, width: int = 3):
        super().__init__()
        if width < 1 or width % 2 == 0:
            raise ValueError(f"char_width must be odd (the window centred on each character), got {width}")
        self.embedding = nn.Embedding(char_vocab_size, char_embedding_dim)
        self.conv = nn.Conv1d(char_embedding_dim, filters, width, padding=width // 2)
        self.output_size = filters

    def forward(self, chars: torch.Tensor, char_lengths: torch.Tensor) -> torch.Tensor:
        """``chars`` ``(B, T, W)``, ``char_lengths`` ``(B, T)`` -> ``(B, T, output_size)``."""
        batch, steps, width = chars.shape
        real = torch.arange(width, device=chars.device) < char_lengths.reshape(-1, 1).clamp(min=1)  # (B*T, W)
        # Padding characters read as zero vectors, like the convolution's own zero padding at the edges.
        x = self.embedding(chars.reshape(-1, width)) * real.unsqueeze(-1)
        features = self.conv(x.transpose(1, 2)).masked_fill(~real.unsqueeze(1), float("-inf"))
        return features.amax(dim=2).view(batch, steps, -1)


class SequenceTagger(nn.Module):
    """Word embedding (+ character features) -> stacked BiRNN -> per-token tag scores -> softmax or CRF.

    Args:
        vocab_size: word vocabulary size.
        labels: tag names; with ``output="crf"`` and IOB2 names, invalid transitions (``O -> I-PER``)
            are forbidden in training and decoding.
        char_vocab_size: > 0 adds character-level word features: ``char_encoder`` ``lstm`` (a BiLSTM of
            ``char_hidden_size`` per direction, Lample et al. 2016) or ``cnn`` (``char_filters``
            filters of width ``char_width``, max over the word, Ma & Hovy 2016).
        output: ``softmax`` (independent per-token decisions) or ``crf`` (Viterbi over the sentence).
        recurrent_init, nonlinearity, heads, block, slstm_at: of the word-level stack (see ``RecurrentStack``); the
            character encoder keeps torch's initialisation.
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
        char_encoder: Literal["lstm", "cnn"] = "lstm",
        char_filters: int = 30,
        char_width: int = 3,
        output: Literal["softmax", "crf"] = "crf",
        recurrent_init: RecurrentInit = "default",
        nonlinearity: Nonlinearity = "tanh",
        heads: int = 4,
        block: Block = "none",
        slstm_at: list[int] | None = None,
    ):
        super().__init__()
        if output not in ("softmax", "crf"):
            raise ValueError(f"output must be 'softmax' or 'crf', got {output!r}")
        self.labels = list(labels)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        if char_encoder not in ("lstm", "cnn"):
            raise ValueError(f"char_encoder must be 'lstm' or 'cnn', got {char_encoder!r}")
        self.chars = None
        if char_vocab_size and char_encoder == "lstm":
            self.chars = CharWordEncoder(char_vocab_size, char_embedding_dim, char_hidden_size)
        elif char_vocab_size:
            self.chars = CharConvWordEncoder(char_vocab_size, char_embedding_dim, char_filters, char_width)
        input_size = embedding_dim + (self.chars.output_size if self.chars else 0)
        self.dropout = make_dropout(dropout, locked_dropout)
        self.rnn = StackConfig.pick(locals(), bidirectional=True).build(input_size, hidden_size)
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
