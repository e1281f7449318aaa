"""Hawk's recurrent block with the real-gated linear recurrent unit (RG-LRU).

De, Smith, Fernando et al. (2024), "Griffin: Mixing Gated Linear Recurrences with Local Attention for
Efficient Language Models" (arXiv:2402.19427), section 2.4. The input goes two ways: a GeLU gate
branch, and a linear map -> a short causal convolution -> the RG-LRU

    r_t = sigmoid(W_a u_t + b_a),   i_t = sigmoid(W_x u_t + b_x)          recurrence and input gates
    log a_t = -c * r_t * softplus(-L)                                     a_t = sigmoid(L) ** (c r_t), c = 8
    h_t = a_t * h_{t-1} + sqrt(1 - a_t ** 2) * (i_t * u_t)

whose output, times the gate branch, is projected back to the layer's width. The paper's gates are
block-diagonal; here they are dense (one ``(H, 2H)`` map), which costs ``H * H`` parameters per layer more.
``a_t`` depends on the input alone, so training runs a parallel scan (``zoo.cells.chunked.diagonal_scan``)
and inference the exact step-by-step recurrence (``zoo.cells.minimal.linear_recurrence``, an ONNX Loop).
"""

import torch
from torch import nn
from torch.nn import functional as F

from zoo.cells.chunked import diagonal_scan
from zoo.cells.minimal import linear_recurrence
from zoo.cells.packed_state import StateLayout, causal_conv

GATE_SCALE = 8.0  # the paper's c


class RGLRUBlock(nn.Module):
    """One direction of an ``rglru`` layer: ``(B, T, F)`` -> ``(B, T, H)``; its state: ``h`` and the
    convolution's last inputs."""

    def __init__(self, input_size: int, hidden_size: int, conv_width: int = 4, **_):
        super().__init__()
        self.gate_proj = nn.Linear(input_size, hidden_size)
        self.input_proj = nn.Linear(input_size, hidden_size)
        self.conv = nn.Conv1d(hidden_size, hidden_size, conv_width, groups=hidden_size)
        self.gates = nn.Linear(hidden_size, 2 * hidden_size)  # [recurrence gate, input gate]
        self.log_base = nn.Parameter(torch.empty(hidden_size))  # L: a = sigmoid(L)
        self.output_proj = nn.Linear(hidden_size, hidden_size)
        self.layout = StateLayout(h=(hidden_size,), previous=(conv_width - 1, hidden_size))
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        """``a ** c`` uniform in [0.9, 0.999], the paper's initialisation (slow decays at the start)."""
        with torch.no_grad():
            a = torch.empty_like(self.log_base).uniform_(0.9, 0.999) ** (1.0 / GATE_SCALE)
            self.log_base.copy_(torch.log(a) - torch.log1p(-a))  # the logit of a

    def forward(self, x, state, lengths, valid, parallel: bool):
        h, previous = self.layout.unpack(state)
        branch = F.gelu(self.gate_proj(x))  # (B, T, H)
        u, previous = causal_conv(self.input_proj(x), previous, self.conv.weight, self.conv.bias, lengths)
        r, i = torch.sigmoid(self.gates(u)).chunk(2, dim=-1)  # (B, T, H) each
        log_a = -GATE_SCALE * r * F.softplus(-self.log_base)  # (B, T, H), < 0
        # sqrt(1 - a^2) without the cancellation of 1 - a^2 near a = 1: 1 - exp(2x) = tanh(-x) (1 + exp(2x)),
        # expm1's accuracy from ops that the ONNX exporter has (it has neither expm1 nor sinh).
        # The floor bounds sqrt's derivative (500) where a -> 1: without it a PTB run's gradients
        # became inf and its loss nan after 794 steps (Griffin bounds this derivative too).
        b = torch.sqrt((torch.tanh(-log_a) * (1 + torch.exp(2 * log_a))).clamp_min(1e-6)) * (i * u)
        if valid is not None:  # a = 1, b = 0 past the length: the state stays
            log_a, b = log_a.masked_fill(~valid, 0.0), b.masked_fill(~valid, 0.0)
        if parallel:
            states = diagonal_scan(log_a, b, h)  # (B, T, H)
        else:
            states = linear_recurrence(log_a.exp(), b, h)  # (B, T, H)
        return self.output_proj(branch * states), self.layout.pack(states[:, -1], previous)
