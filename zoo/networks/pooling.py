"""Pooling a recurrent stack's outputs into one vector per sequence, over valid positions only."""

from typing import Literal, get_args

import torch
from torch import nn

Pooling = Literal["last", "mean", "max", "attention", "concat"]
POOLINGS = get_args(Pooling)


def pooled_size(kind: Pooling, output_size: int) -> int:
    """The width of ``pool``'s result for a stack whose outputs are ``output_size`` wide."""
    return 3 * output_size if kind == "concat" else output_size


def valid_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, T)`` bool: True at the first ``lengths[b]`` positions of each row."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def last_layer_state(state, num_directions: int, hidden_size: int | None = None) -> torch.Tensor:
    """The final hidden state of the top layer, both directions concatenated: ``(B, D*H)``.

    For a bidirectional layer the backward direction's final state is the one at position 0,
    so "last" pooling sees the whole sequence from both ends. A modern cell's packed state starts with
    its last output (``zoo.cells.modern``): ``hidden_size`` keeps those columns.
    """
    h = state[0] if isinstance(state, tuple) else state
    return h[-num_directions:, :, :hidden_size].transpose(0, 1).flatten(1)  # (D, B, H) -> (B, D*H), forward first


class AttentionPooling(nn.Module):
    """Additive self-attention: ``a = softmax(v^T tanh(W h_t))`` over valid steps, ``sum_t a_t h_t``."""

    def __init__(self, size: int, attention_size: int | None = None):
        super().__init__()
        self.project = nn.Linear(size, attention_size or size)
        self.score = nn.Linear(attention_size or size, 1, bias=False)

    def forward(self, outputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.project(outputs))).squeeze(-1)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return torch.einsum("bt,bth->bh", weights, outputs), weights


def pool(
    kind: Pooling, outputs: torch.Tensor, lengths: torch.Tensor, state, num_directions: int, attention=None
) -> torch.Tensor:
    """``outputs`` ``(B, T, F)`` -> ``(B, F)`` (``(B, 3F)`` for ``concat``: last, max and mean side by
    side, ULMFiT's "concat pooling"); padding positions never contribute."""
    if kind == "concat":
        return torch.cat([pool(k, outputs, lengths, state, num_directions) for k in ("last", "max", "mean")], dim=-1)
    if kind == "last":
        return last_layer_state(state, num_directions, outputs.size(-1) // num_directions)
    mask = valid_mask(lengths.to(outputs.device), outputs.size(1))
    if kind == "mean":
        return (outputs * mask.unsqueeze(-1)).sum(1) / lengths.to(outputs).clamp(min=1).unsqueeze(-1)
    if kind == "max":
        return outputs.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values
    if kind == "attention":
        return attention(outputs, mask)[0]
    raise ValueError(f"unknown pooling {kind!r}; choose one of {', '.join(POOLINGS)}")
