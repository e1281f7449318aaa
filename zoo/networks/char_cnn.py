"""Character-aware word vectors (Kim, Jernite, Sontag & Rush 2016, "Character-Aware Neural Language
Models"): each word is read as its characters, through convolutions of several widths with max-over-time
pooling and highway layers, in place of a word embedding.

Characters are the word's UTF-8 bytes (``zoo.common.text.word_bytes``), so the character inventory is fixed
(256 bytes and three markers) and needs no vocabulary of its own.
"""

import torch
from torch import nn
from torch.nn import functional as F

from zoo.common.text import BYTE_VOCAB_SIZE

KIM_SMALL_FILTERS = [25, 50, 75, 100, 125, 150]  # filters of width 1..6: 25 x width (LSTM-Char-Small)


class Highway(nn.Module):
    """``layers`` highway layers (Srivastava et al. 2015): ``t * relu(W_H y) + (1 - t) * y`` with the
    transform gate ``t = sigmoid(W_T y + b_T)``; ``b_T`` starts at -2 so that the layers begin by
    carrying their input through, as Kim et al. initialise them."""

    def __init__(self, size: int, layers: int = 1):
        super().__init__()
        self.transforms = nn.ModuleList(nn.Linear(size, size) for _ in range(layers))
        self.gates = nn.ModuleList(nn.Linear(size, size) for _ in range(layers))
        self.reset_gate_biases()

    def reset_gate_biases(self) -> None:
        for gate in self.gates:
            nn.init.constant_(gate.bias, -2.0)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for transform, gate in zip(self.transforms, self.gates, strict=True):
            t = torch.sigmoid(gate(y))
            y = t * F.relu(transform(y)) + (1 - t) * y
        return y


class CharCNN(nn.Module):
    """Characters ``(N, W)`` -> word vectors ``(N, sum(filters))``: embedding, one convolution per width
    ``1..len(filters)`` (``filters[w - 1]`` of width ``w``) with tanh and max over the word, then highway."""

    def __init__(self, char_embedding_dim: int = 15, filters: list[int] | None = None, highway_layers: int = 1):
        super().__init__()
        filters = list(KIM_SMALL_FILTERS if filters is None else filters)
        if not filters or min(filters) < 0 or sum(filters) == 0:
            raise ValueError(f"char_filters must be counts of filters per width 1, 2, ...; got {filters}")
        self.embedding = nn.Embedding(BYTE_VOCAB_SIZE, char_embedding_dim, padding_idx=0)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(char_embedding_dim, count, width) for width, count in enumerate(filters, start=1) if count
        )
        self.output_size = sum(filters)
        self.highway = Highway(self.output_size, highway_layers)

    def reset_special_parameters(self) -> None:
        """After a model re-initialises every parameter (``init_range``): the padding byte's vector back
        to zero and the highway gates' biases back to -2."""
        with torch.no_grad():
            self.embedding.weight[self.embedding.padding_idx].zero_()
        self.highway.reset_gate_biases()

    @property
    def max_width(self) -> int:
        return max(conv.kernel_size[0] for conv in self.convolutions)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        x = self.embedding(chars).transpose(1, 2)  # (N, E, W)
        features = [torch.tanh(conv(x)).amax(dim=2) for conv in self.convolutions]  # each (N, filters)
        return self.highway(torch.cat(features, dim=1))  # (N, sum(filters))
