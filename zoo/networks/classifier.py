"""Many-to-one: a recurrent sequence classifier (sentiment, topic, ...)."""

import torch
from torch import nn

from zoo.cells.recurrent import Block, CellType, Nonlinearity, RecurrentInit, StackConfig
from zoo.networks.dropout import make_dropout
from zoo.networks.pooling import POOLINGS, AttentionPooling, Pooling, pool, pooled_size


class SequenceClassifier(nn.Module):
    """Embedding -> recurrent stack -> pooling over valid steps -> linear classifier.

    Args:
        vocab_size, num_classes: sizes set by the data.
        embedding_dim, hidden_size, num_layers, cell, bidirectional, residual, recurrent_init, nonlinearity,
            heads, block, slstm_at: the stack (see ``RecurrentStack``).
        dropout: on the embeddings, between layers and on the pooled vector.
        locked_dropout: one dropout mask per sequence instead of one per step.
        pooling: ``last`` (final state; both directions of a BiRNN), ``mean``, ``max``,
            ``attention`` (learned additive attention over the steps) or ``concat`` (last, max and
            mean side by side, as ULMFiT's classifier reads its language model's outputs).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        cell: CellType = "lstm",
        bidirectional: bool = True,
        dropout: float = 0.0,
        locked_dropout: bool = False,
        residual: bool = False,
        pooling: Pooling = "last",
        recurrent_init: RecurrentInit = "default",
        nonlinearity: Nonlinearity = "tanh",
        heads: int = 4,
        block: Block = "none",
        slstm_at: list[int] | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.pooling = pooling
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.embedding_dropout = make_dropout(dropout, locked_dropout)
        self.rnn = StackConfig.pick(locals()).build(embedding_dim, hidden_size)
        self.attention = AttentionPooling(self.rnn.output_size) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(pooled_size(pooling, self.rnn.output_size), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``(B, T)`` padded ids, ``lengths`` ``(B,)`` -> logits ``(B, num_classes)``."""
        x = self.embedding_dropout(self.embedding(tokens))
        outputs, state = self.rnn(x, lengths=lengths)
        pooled = pool(self.pooling, outputs, lengths, state, self.rnn.num_directions, self.attention)
        return self.classifier(self.dropout(pooled))
