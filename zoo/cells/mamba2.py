"""Mamba-2's layer: the state-space dual (SSD) selective scan.

Dao & Gu (2024), "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality" (arXiv:2405.21060), sections 6-7. One input projection gives the gate
``z``, the SSM input ``x`` (``heads`` heads of ``P``), ``B`` and ``C`` (``N`` wide, shared by the heads)
and one step size per head; ``x, B, C`` pass a short causal convolution and SiLU. Per head, with the
scalar ``A = -exp(A_log)`` and ``Δ_t = softplus(dt_t + dt_bias)``:

    S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_t^T        (S: P x N)
    y_t = S_t C_t + D x_t

then ``RMSNorm(y * SiLU(z))`` and the output projection. The decay is a scalar per head, so training
runs the chunked dual form (``ssd_chunkwise``: within a chunk a masked ``(L, L)`` attention-like
product, between chunks the state) and inference the step loop (``ssd_recurrence``, an ONNX Loop).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from zoo.cells.blocks import RMSNorm
from zoo.cells.chunked import decay_matrix, split_chunks
from zoo.cells.packed_state import StateLayout, causal_conv, split_heads


@torch.jit.script
def ssd_recurrence(
    u: torch.Tensor, log_a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step by step: ``u = Δ x`` ``(B, T, heads, P)``, ``log_a = Δ A`` ``(B, T, heads)``, ``b, c`` ``(B, T, N)``,
    ``state`` ``(B, heads, P, N)`` -> every ``S_t C_t`` ``(B, T, heads, P)`` and the final state."""
    outputs: list[torch.Tensor] = []
    for t in range(u.size(1)):
        decay = torch.exp(log_a[:, t]).unsqueeze(-1).unsqueeze(-1)  # (B, heads, 1, 1)
        state = decay * state + u[:, t].unsqueeze(-1) * b[:, t].unsqueeze(1).unsqueeze(1)
        outputs.append((state * c[:, t].unsqueeze(1).unsqueeze(1)).sum(dim=-1))
    return torch.stack(outputs, dim=1), state


def ssd_chunkwise(u, log_a, b, c, state, chunk_size: int):
    """``ssd_recurrence``, chunk by chunk. Same arguments and results."""
    steps = u.size(1)
    u, log_a, b, c = (split_chunks(x, chunk_size) for x in (u, log_a, b, c))  # padding: a = 1, no input
    cumulative = log_a.cumsum(dim=2)  # (B, n, L, heads)
    decay = decay_matrix(cumulative)  # (B, n, L, L, heads)
    scores = torch.einsum("bnls,bnks->bnlk", c, b)  # (B, n, L, L): C_t . B_k
    within = torch.einsum("bnlk,bnlkh,bnkhp->bnlhp", scores, decay, u)  # (B, n, L, heads, P)
    outputs = []
    for j in range(u.size(1)):
        from_start = cumulative[:, j].exp()  # (B, L, heads)
        carried = torch.einsum("bls,bhps->blhp", c[:, j], state) * from_start.unsqueeze(-1)
        outputs.append(within[:, j] + carried)
        last = decay[:, j, -1]  # (B, L, heads): each step's input as it stands at the chunk's end
        state = from_start[:, -1, :, None, None] * state + torch.einsum("bkh,bkhp,bks->bhps", last, u[:, j], b[:, j])
    return torch.cat(outputs, dim=1)[:, :steps], state


class Mamba2Mixer(nn.Module):
    """One direction of a ``mamba2`` layer: ``(B, T, F)`` -> ``(B, T, H)``, inner width ``expand * H`` in ``heads``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        heads: int = 4,
        state_size: int = 64,
        conv_width: int = 4,
        expand: int = 2,
        chunk_size: int = 64,
        **_,
    ):
        super().__init__()
        inner = expand * hidden_size
        self.heads, self.head_size, self.state_size, self.chunk_size = heads, inner // heads, state_size, chunk_size
        self.sizes = [inner, inner + 2 * state_size, heads]  # [z, (x, B, C), dt]
        self.in_proj = nn.Linear(input_size, sum(self.sizes))
        self.conv = nn.Conv1d(self.sizes[1], self.sizes[1], conv_width, groups=self.sizes[1])
        self.log_decay = nn.Parameter(torch.empty(heads))  # A_log
        self.step_bias = nn.Parameter(torch.empty(heads))  # dt_bias
        self.skip = nn.Parameter(torch.empty(heads))  # D
        self.norm = RMSNorm(inner)
        self.out_proj = nn.Linear(inner, hidden_size)
        self.layout = StateLayout(state=(heads, self.head_size, state_size), previous=(conv_width - 1, self.sizes[1]))
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        """The paper's code: ``A`` uniform in [1, 16], step sizes log-uniform in [0.001, 0.1], ``D = 1``."""
        with torch.no_grad():
            self.log_decay.copy_(torch.empty(self.heads).uniform_(1, 16).log())
            step = torch.exp(torch.empty(self.heads).uniform_(math.log(1e-3), math.log(1e-1)))
            self.step_bias.copy_(step + torch.log(-torch.expm1(-step)))  # the inverse of softplus
            self.skip.fill_(1.0)

    def forward(self, x, state, lengths, valid, parallel: bool):
        ssm_state, previous = self.layout.unpack(state)
        z, xbc, dt = self.in_proj(x).split(self.sizes, dim=-1)
        xbc, previous = causal_conv(xbc, previous, self.conv.weight, self.conv.bias, lengths)
        xs, b, c = F.silu(xbc).split([self.sizes[0], self.state_size, self.state_size], dim=-1)
        xs = split_heads(xs, self.heads)  # (B, T, heads, P)
        step = F.softplus(dt + self.step_bias)  # (B, T, heads)
        if valid is not None:  # Δ = 0 past the length: a = 1 and no input, the state stays
            step = step.masked_fill(~valid, 0.0)
        u, log_a = xs * step.unsqueeze(-1), step * -torch.exp(self.log_decay)
        if parallel:
            y, ssm_state = ssd_chunkwise(u, log_a, b, c, ssm_state, self.chunk_size)
        else:
            y, ssm_state = ssd_recurrence(u, log_a, b, c, ssm_state)
        y = (y + self.skip.unsqueeze(-1) * xs).flatten(2)  # (B, T, inner)
        return self.out_proj(self.norm(y * F.silu(z))), self.layout.pack(ssm_state, previous)
