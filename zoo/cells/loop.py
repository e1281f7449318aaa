"""Recurrences that have no fused kernel, written as explicit per-step loops.

These run a Python loop over time steps, so they are several times slower than the fused
``nn.RNN``/``nn.LSTM``/``nn.GRU`` kernels; use them to study the architectures, not for speed.
Each cell projects the whole input sequence once (``project_input``) and then only does the
recurrent part per step (``step``).
"""

from functools import partial

import torch
from torch import nn


class GatedCell(nn.Module):
    """The simple gated RNN: one update gate interpolates between the old state and a candidate.

    c_t = tanh(W_c x_t + U_c h_{t-1} + b_c)
    z_t = sigmoid(W_z x_t + U_z h_{t-1} + b_z)
    h_t = z_t * h_{t-1} + (1 - z_t) * c_t
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_proj = nn.Linear(input_size, 2 * hidden_size)
        self.hidden_proj = nn.Linear(hidden_size, 2 * hidden_size, bias=False)

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_proj(x)

    def recurrence(self) -> tuple[nn.Parameter, list[nn.Parameter]]:
        """``[U_c; U_z]`` ``(2H, H)`` and the bias added to its product."""
        return self.hidden_proj.weight, [self.input_proj.bias]

    def step(self, projected_x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        candidate, gate = (projected_x + self.hidden_proj(h)).chunk(2, dim=-1)
        z = torch.sigmoid(gate)
        h = z * h + (1.0 - z) * torch.tanh(candidate)
        return h, h


class JordanCell(nn.Module):
    """Jordan (output-to-hidden) recurrence: the previous *output*, not the hidden layer, feeds back.

        h_t = tanh(W_h x_t + U_h y_{t-1} + b_h)
        y_t = tanh(W_y h_t + b_y)

    The carried state is ``y``; the layer's output at each step is ``y_t``.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_proj = nn.Linear(input_size, hidden_size)
        self.output_to_hidden = nn.Linear(hidden_size, hidden_size, bias=False)
        self.hidden_to_output = nn.Linear(hidden_size, hidden_size)

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_proj(x)

    def recurrence(self) -> tuple[nn.Parameter, list[nn.Parameter]]:
        """``U_h`` ``(H, H)`` and the bias added to its product."""
        return self.output_to_hidden.weight, [self.input_proj.bias]

    def step(self, projected_x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(projected_x + self.output_to_hidden(y))
        y = torch.tanh(self.hidden_to_output(h))
        return y, y


LOOP_CELLS = {"gated": GatedCell, "jordan": JordanCell}


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each batch-first sequence within its own length; padding stays where it is."""
    if lengths is None:
        return x.flip(1)
    steps = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def run_directions(run, directions: nn.ModuleList, x: torch.Tensor, state: torch.Tensor, lengths) -> tuple:
    """One layer's pass in each of its ``directions`` (one or two cells): ``run(cell, x, state)`` gives a
    direction's outputs ``(B, T, H)`` and final state ``(B, S)``; the backward cell reads each row reversed
    within its length. Returns the outputs side by side ``(B, T, D*H)`` and the states stacked ``(D, B, S)``."""
    out, final = run(directions[0], x, state[0])
    if len(directions) == 1:
        return out, final.unsqueeze(0)
    out_bwd, final_bwd = run(directions[1], reverse_padded(x, lengths), state[1])
    return torch.cat([out, reverse_padded(out_bwd, lengths)], dim=-1), torch.stack([final, final_bwd])


class LoopRecurrence(nn.Module):
    """One layer of a loop cell with the calling convention of a single-layer ``nn.RNN``.

    ``forward(x (B, T, F), state (D, B, H), lengths (B,) or None) -> (output (B, T, D*H), state)``.
    Steps past a sequence's length leave its state unchanged and output zeros, which matches what
    packed sequences give for the fused kernels.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, bidirectional: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        directions = 2 if bidirectional else 1
        self.directions = nn.ModuleList(LOOP_CELLS[cell](input_size, hidden_size) for _ in range(directions))

    def _run(self, cell: nn.Module, x, h, lengths=None):
        projected = cell.project_input(x)
        outputs = []
        for t in range(x.size(1)):
            out, new_h = cell.step(projected[:, t], h)
            if lengths is not None:
                valid = (t < lengths).unsqueeze(1)
                h = torch.where(valid, new_h, h)
                out = out * valid
            else:
                h = new_h
            outputs.append(out)
        return torch.stack(outputs, dim=1), h

    def forward(self, x, state=None, lengths=None):
        batch = x.size(0)
        if state is None:
            state = x.new_zeros(len(self.directions), batch, self.hidden_size)
        if lengths is not None:
            lengths = lengths.to(x.device)
        return run_directions(partial(self._run, lengths=lengths), self.directions, x, state, lengths)
