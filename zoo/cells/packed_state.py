"""A layer state of several tensors packed into one vector per row, and the causal convolution that
keeps its last inputs in such a state.

The stack carries one ``(layers * directions, B, S)`` tensor for every cell but the LSTM, and the
runtime, the exported graphs and beam search all rely on that shape. Today's recurrences carry more
than a vector (xLSTM's matrix memory and stabiliser, Mamba-2's per-head state matrix, a temporal
convolution's last inputs), so each of them packs its parts into the ``S`` columns of that tensor:
nothing outside the layer needs to know what the parts are.
"""

import math

import torch
from torch.nn import functional as F


class StateLayout:
    """Named parts of one packed ``(B, S)`` state, each of a fixed shape after the batch dimension."""

    def __init__(self, **parts: tuple[int, ...]):
        self.shapes = parts
        self.sizes = [math.prod(shape) for shape in parts.values()]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def unpack(self, state: torch.Tensor) -> list[torch.Tensor]:
        """``(B, S)`` -> one tensor per part, ``(B, *shape)``, in the order the parts were named."""
        pieces = state.split(self.sizes, dim=-1)
        return [
            piece.reshape(state.shape[:-1] + shape) for piece, shape in zip(pieces, self.shapes.values(), strict=True)
        ]

    def pack(self, *parts: torch.Tensor) -> torch.Tensor:
        return torch.cat([part.flatten(1) for part in parts], dim=-1)  # (B, S)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(..., heads * d)`` -> ``(..., heads, d)``. Unlike ``unflatten``, the leading sizes stay those of
    ``x`` when the ONNX exporter traces it: ``unflatten`` records the example's batch and length as
    constants, and a Loop over the time steps would then run the example's number of steps."""
    return x.reshape(x.shape[:-1] + (heads, x.size(-1) // heads))


def causal_conv(
    x: torch.Tensor, previous: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A depthwise causal convolution over time that continues where an earlier call stopped.

    ``x`` ``(B, T, C)``; ``previous`` ``(B, K-1, C)``: the last ``K - 1`` inputs before ``x`` (zeros at the
    start); ``weight`` ``(C, 1, K)``. Returns the outputs ``(B, T, C)`` and the new ``previous``: the last
    ``K - 1`` inputs up to each row's length, so that padding does not enter the carried state.
    """
    width = weight.size(-1)
    extended = torch.cat([previous, x], dim=1)  # (B, K-1+T, C)
    out = F.conv1d(extended.transpose(1, 2), weight, bias, groups=x.size(-1)).transpose(1, 2)  # (B, T, C)
    if lengths is None:
        return out, extended[:, extended.size(1) - (width - 1) :]
    index = lengths.unsqueeze(1) + torch.arange(width - 1, device=x.device)  # (B, K-1): the inputs before each length
    return out, extended.gather(1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))
