"""Dropout variants for recurrent networks."""

import torch
from torch import nn


class LockedDropout(nn.Module):
    """Variational ("locked") dropout: one mask per sequence, reused at every time step.

    Gal & Ghahramani (2016); the AWD-LSTM regulariser. Input is batch-first ``(B, T, F)``.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_dropout(p: float, locked: bool) -> nn.Module:
    return LockedDropout(p) if locked else nn.Dropout(p)
