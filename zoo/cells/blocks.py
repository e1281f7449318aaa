"""The pre-norm residual block with a gated MLP that today's recurrent models stack their layers in.

xLSTM's blocks, Griffin's residual block and minGRU's language models all wrap each recurrent layer
the same way (Beck et al. 2024, De et al. 2024, Feng et al. 2024):

    y = x + layer(RMSNorm(x))
    out = y + W_down(GeLU(W_gate RMSNorm(y)) * W_up RMSNorm(y))

``RecurrentStack(block="residual_mlp")`` builds one per layer (any cell) and one final RMSNorm.
When a layer's input is narrower or wider than its output (the first layer), the shortcut is a linear
map, as in a ResNet's projection shortcut.
"""

from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

Block = Literal["none", "residual_mlp"]
BLOCKS = get_args(Block)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich 2019), written out: ``nn.RMSNorm`` has no
    ONNX form below opset 23."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def reset_special_parameters(self) -> None:
        """Weights of 1 (a model's uniform initialisation of every parameter calls this after)."""
        with torch.no_grad():
            self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class ResidualMLPBlock(nn.Module):
    """The parts around one recurrent layer: its input norm and shortcut, and the gated MLP after it."""

    def __init__(self, input_size: int, width: int, expansion: int = 2):
        super().__init__()
        self.norm = RMSNorm(input_size)
        self.shortcut = nn.Identity() if input_size == width else nn.Linear(input_size, width, bias=False)
        self.mlp_norm = RMSNorm(width)
        self.gate_up = nn.Linear(width, 2 * expansion * width)
        self.down = nn.Linear(expansion * width, width)

    def finish(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """``x``: the block's input; ``mixed``: the recurrent layer's output on ``norm(x)``."""
        y = self.shortcut(x) + mixed
        gate, up = self.gate_up(self.mlp_norm(y)).chunk(2, dim=-1)
        return y + self.down(F.gelu(gate) * up)
