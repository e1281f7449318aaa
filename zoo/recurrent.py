"""The configurable recurrent stack every zoo model is built on.

Cells ``rnn`` (Elman, tanh), ``lstm`` and ``gru`` run on the fused ``nn.RNN``/``nn.LSTM``/``nn.GRU``
kernels (cuDNN on GPU, oneDNN on CPU); ``gated`` and ``jordan`` are explicit loops (see ``zoo.cells``).
Layers are kept as separate modules so that dropout (standard or locked) and residual connections
can sit between them.
"""

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zoo.cells import LOOP_CELLS, LoopRecurrence
from zoo.dropout import make_dropout

CellType = Literal["rnn", "lstm", "gru", "gated", "jordan"]
FUSED_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELLS = tuple(FUSED_CELLS) + tuple(LOOP_CELLS)

# An LSTM state is (h, c); every other cell carries one tensor. Shapes follow torch:
# (num_layers * num_directions, batch, hidden_size).
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def map_state(state: State | None, fn) -> State | None:
    """Apply ``fn`` to every tensor of a state (``None`` stays ``None``)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)
    return fn(state)


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a truncated-BPTT boundary, keeping the values."""
    return map_state(state, torch.Tensor.detach)


class RecurrentStack(nn.Module):
    """``num_layers`` recurrent layers of one cell type, batch-first.

    Args:
        input_size: features per input step.
        hidden_size: units per direction in each layer.
        num_layers: depth of the stack.
        cell: one of ``rnn``, ``lstm``, ``gru``, ``gated``, ``jordan``.
        bidirectional: run each layer in both directions and concatenate.
        dropout: dropout on the input of every layer after the first.
        locked_dropout: use one dropout mask per sequence instead of one per step.
        residual: add each layer's input to its output (layers after the first), as in GNMT.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        cell: CellType = "lstm",
        bidirectional: bool = False,
        dropout: float = 0.0,
        locked_dropout: bool = False,
        residual: bool = False,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.residual = residual
        self.layers = nn.ModuleList(
            self._make_layer(input_size if i == 0 else self.output_size, bidirectional) for i in range(num_layers)
        )
        self.inter_layer_dropout = make_dropout(dropout, locked_dropout)

    def _make_layer(self, input_size: int, bidirectional: bool) -> nn.Module:
        if self.cell in FUSED_CELLS:
            return FUSED_CELLS[self.cell](input_size, self.hidden_size, batch_first=True, bidirectional=bidirectional)
        return LoopRecurrence(self.cell, input_size, self.hidden_size, bidirectional)

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.num_directions

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        zeros = torch.zeros(
            self.num_layers * self.num_directions, batch_size, self.hidden_size, device=device, dtype=dtype
        )
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def _layer_state(self, state: State | None, i: int) -> State | None:
        rows = slice(i * self.num_directions, (i + 1) * self.num_directions)
        return map_state(state, lambda s: s[rows].contiguous())

    def _run_layer(self, layer: nn.Module, x, state, lengths):
        if isinstance(layer, LoopRecurrence):
            return layer(x, state, lengths)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no low-precision RNN primitive on most CPUs ("could not create a primitive
            # descriptor"), so under CPU autocast the fused recurrence runs in float32.
            with torch.autocast("cpu", enabled=False):
                return self._run_fused(layer, x.float(), map_state(state, torch.Tensor.float), lengths)
        return self._run_fused(layer, x, state, lengths)

    @staticmethod
    def _run_fused(layer: nn.Module, x, state, lengths):
        if lengths is None:
            return layer(x, state)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = layer(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return out, state

    def forward(
        self, x: torch.Tensor, state: State | None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """``x``: ``(B, T, input_size)``; ``lengths``: valid steps per sequence (packed when given).

        Returns the last layer's outputs ``(B, T, output_size)`` and the final state of every layer.
        """
        final_states = []
        for i, layer in enumerate(self.layers):
            layer_input = x if i == 0 else self.inter_layer_dropout(x)
            out, layer_state = self._run_layer(layer, layer_input, self._layer_state(state, i), lengths)
            x = out + x if self.residual and i > 0 else out
            final_states.append(layer_state)
        if self.cell == "lstm":
            return x, (torch.cat([s[0] for s in final_states]), torch.cat([s[1] for s in final_states]))
        return x, torch.cat(final_states)
