"""Attention over encoder outputs, masked to each source's valid positions.

``bahdanau``: additive, score = v^T tanh(W_q q + W_k k) (Bahdanau et al. 2015, e = f(s_{t-1}, h)).
``dot`` / ``general``: multiplicative, score = q^T k or q^T W k (Luong et al. 2015).
"""

from typing import Literal

import torch
from torch import nn

AttentionType = Literal["bahdanau", "dot", "general"]
ATTENTIONS = ("bahdanau", "dot", "general")


class Attention(nn.Module):
    """Scores queries ``(B, T, Q)`` against memory ``(B, S, M)``; returns contexts and weights.

    The memory's projection does not depend on the query, so it is computed once per source
    (``keys``) and reused at every decoding step.
    """

    def __init__(self, kind: AttentionType, query_size: int, memory_size: int, attention_size: int | None = None):
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"unknown attention {kind!r}; choose one of {', '.join(ATTENTIONS)}")
        if kind == "dot" and query_size != memory_size:
            raise ValueError(f"dot attention needs query_size == memory_size, got {query_size} and {memory_size}")
        self.kind = kind
        if kind == "bahdanau":
            attention_size = attention_size or query_size
            self.key_proj = nn.Linear(memory_size, attention_size, bias=False)
            self.query_proj = nn.Linear(query_size, attention_size)
            self.score = nn.Linear(attention_size, 1, bias=False)
        elif kind == "general":
            self.key_proj = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """The query-independent part of the scores, ``(B, S, ·)``."""
        return memory if self.kind == "dot" else self.key_proj(memory)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` ``(B, T, Q)``, ``mask`` ``(B, S)`` True at valid source positions.

        Returns ``context`` ``(B, T, M)`` and ``weights`` ``(B, T, S)`` (each row sums to 1 over
        the valid positions and is 0 on padding).
        """
        if self.kind == "bahdanau":
            hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))  # (B, T, S, A)
            scores = self.score(hidden).squeeze(-1)
        else:
            scores = query @ keys.transpose(1, 2)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = scores.softmax(dim=-1)
        return weights @ memory, weights
