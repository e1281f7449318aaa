"""xLSTM's two cells: the mLSTM (matrix memory) and the sLSTM (scalar memory, recurrent gates).

Beck, Pöppel, Spanring et al. (2024), "xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517),
section 2. Both gate the input exponentially and keep a normaliser ``n`` beside the memory; a
stabiliser ``m`` (a running maximum of the log gates) keeps every ``exp`` finite without changing the
output, since memory and normaliser are scaled by the same ``exp(-m)``:

    m_t = max(log f_t + m_{t-1}, i~_t),  i'_t = exp(i~_t - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t)

with ``log f_t = log sigmoid(f~_t)``. The mLSTM, per head of size ``d``:

    C_t = f'_t C_{t-1} + i'_t k_t v_t^T,   n_t = f'_t n_{t-1} + i'_t k_t          (k_t scaled by 1/sqrt(d))
    h_t = o_t * HeadNorm((q_t^T C_t) / max(|q_t^T n_t|, exp(-m_t)))

where HeadNorm is a layer norm over each head's ``d`` units (the xLSTM block's "multi-head layer norm"):
the quotient's scale follows ``|q_t^T n_t|`` and swings by orders of magnitude between steps and
heads (on PTB, validation perplexity after 300 steps: 664 without the norm, 420 with it).

Its gates read only the input, so training runs the chunkwise-parallel form (``mlstm_chunkwise``)
and inference the step loop (``mlstm_recurrence``, an ONNX Loop); the two give the same states. The
sLSTM's gates also read ``h_{t-1}`` through a block-diagonal (per-head) matrix,

    c_t = f'_t c_{t-1} + i'_t tanh(z~_t),   n_t = f'_t n_{t-1} + i'_t,   h_t = o_t * c_t / n_t

so it has no parallel form: its input projections are computed once for the whole sequence and the
loop does only the recurrent product.
"""

import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from zoo.cells.chunked import causal_log_weights, split_chunks
from zoo.cells.packed_state import StateLayout, split_heads


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``log(sigmoid(x))`` as ``-softplus(-x)``: ``F.logsigmoid`` exports as ``Log(Sigmoid(x))``, and
    onnxruntime's Sigmoid rounds to 0 below about -20, where a shut forget gate's log became -inf
    (a trained mLSTM's exported logits were 1.04 off PyTorch's; its Softplus is exact there)."""
    return -F.softplus(-x)


def _forget_bias(heads: int) -> torch.Tensor:
    # Forget-gate biases spread over [3, 6] across heads: decays from fast to slow from the start.
    return torch.linspace(3.0, 6.0, heads)


@torch.jit.script
def mlstm_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    memory: torch.Tensor,
    normaliser: torch.Tensor,
    stabiliser: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mLSTM step by step. ``q, k, v`` ``(B, T, heads, d)``; ``log_i`` (the input gate's pre-activation)
    and ``log_f`` ``(B, T, heads)``; state ``(B, heads, d, d)``, ``(B, heads, d)``, ``(B, heads)``.
    Returns ``h~`` ``(B, T, heads, d)`` (before the output gate) and the final state."""
    outputs: list[torch.Tensor] = []
    for t in range(q.size(1)):
        new_stabiliser = torch.maximum(log_f[:, t] + stabiliser, log_i[:, t])  # (B, heads)
        forget = torch.exp(log_f[:, t] + stabiliser - new_stabiliser).unsqueeze(-1)  # (B, heads, 1)
        write = torch.exp(log_i[:, t] - new_stabiliser).unsqueeze(-1)  # (B, heads, 1)
        memory = forget.unsqueeze(-1) * memory + (write * k[:, t]).unsqueeze(-1) * v[:, t].unsqueeze(-2)
        normaliser = forget * normaliser + write * k[:, t]
        stabiliser = new_stabiliser
        numerator = (q[:, t].unsqueeze(-1) * memory).sum(dim=-2)  # (B, heads, d): q^T C
        denominator = torch.maximum((q[:, t] * normaliser).sum(dim=-1).abs(), torch.exp(-stabiliser))
        outputs.append(numerator / denominator.unsqueeze(-1))
    return torch.stack(outputs, dim=1), memory, normaliser, stabiliser


def mlstm_chunkwise(q, k, v, log_i, log_f, memory, normaliser, stabiliser, chunk_size: int):
    """``mlstm_recurrence``, chunk by chunk: within a chunk the outputs are one masked ``(L, L)`` product
    per head; between chunks the state is carried. Same arguments and results."""
    steps = q.size(1)
    q, k, v = (split_chunks(x, chunk_size) for x in (q, k, v))  # (B, n, L, heads, d)
    log_f = split_chunks(log_f, chunk_size)  # (B, n, L, heads); padding: f = 1, i = 0, the state stays
    log_i = split_chunks(log_i, chunk_size, fill=float("-inf"))
    cumulative = log_f.cumsum(dim=2)  # (B, n, L, heads): log of the forget gates' product from the chunk start
    # log D[t, k] = log(f_{k+1} ... f_t) + i~_k for k <= t: how much of step k's write is left at step t.
    log_weights = causal_log_weights(cumulative) + log_i.unsqueeze(2)  # (B, n, L, L, heads)
    outputs = []
    for j in range(q.size(1)):
        from_start = cumulative[:, j] + stabiliser.unsqueeze(1)  # (B, L, heads): the carried state's log scale
        new_stabiliser = torch.maximum(log_weights[:, j].amax(dim=2), from_start)  # (B, L, heads) = the loop's m_t
        weights = torch.exp(log_weights[:, j] - new_stabiliser.unsqueeze(2))  # (B, L, L, heads)
        carried = torch.exp(from_start - new_stabiliser)  # (B, L, heads)
        scores = torch.einsum("blhd,bkhd->blkh", q[:, j], k[:, j]) * weights  # (B, L, L, heads)
        numerator = carried.unsqueeze(-1) * torch.einsum("blhd,bhde->blhe", q[:, j], memory)
        numerator = numerator + torch.einsum("blkh,bkhe->blhe", scores, v[:, j])  # (B, L, heads, d)
        denominator = carried * torch.einsum("blhd,bhd->blh", q[:, j], normaliser) + scores.sum(dim=2)
        denominator = torch.maximum(denominator.abs(), torch.exp(-new_stabiliser))  # (B, L, heads)
        outputs.append(numerator / denominator.unsqueeze(-1))
        last = weights[:, -1]  # (B, L, heads): each step's write as it stands at the chunk's end
        memory = carried[:, -1, :, None, None] * memory + torch.einsum("bkh,bkhd,bkhe->bhde", last, k[:, j], v[:, j])
        normaliser = carried[:, -1, :, None] * normaliser + torch.einsum("bkh,bkhd->bhd", last, k[:, j])
        stabiliser = new_stabiliser[:, -1]
    return torch.cat(outputs, dim=1)[:, :steps], memory, normaliser, stabiliser


class MLSTMCell(nn.Module):
    """One direction of an ``mlstm`` layer: ``(B, T, F)`` -> ``(B, T, H)`` in ``heads`` heads of ``H / heads``."""

    def __init__(self, input_size: int, hidden_size: int, heads: int = 4, chunk_size: int = 64, **_):
        super().__init__()
        self.heads, self.head_size, self.chunk_size = heads, hidden_size // heads, chunk_size
        self.qkvo = nn.Linear(input_size, 4 * hidden_size)  # [query, key, value, output gate]
        self.gates = nn.Linear(input_size, 2 * heads)  # [input gate, forget gate] pre-activations, per head
        d = self.head_size
        self.head_norm = nn.Parameter(torch.ones(heads, d))  # the per-head layer norm's weight
        self.layout = StateLayout(memory=(heads, d, d), normaliser=(heads, d), stabiliser=(heads,))
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        with torch.no_grad():
            self.gates.bias[self.heads :].copy_(_forget_bias(self.heads))
            self.gates.bias[: self.heads].zero_()
            self.head_norm.fill_(1.0)

    def forward(self, x, state, lengths, valid, parallel: bool):
        memory, normaliser, stabiliser = self.layout.unpack(state)
        q, k, v, o = (split_heads(part, self.heads) for part in self.qkvo(x).chunk(4, dim=-1))  # (B, T, heads, d)
        k = k / math.sqrt(self.head_size)
        log_i, f = self.gates(x).chunk(2, dim=-1)  # (B, T, heads) each
        log_f = log_sigmoid(f)
        if valid is not None:  # f = 1, i = 0 past the length: the state stays
            log_f, log_i = log_f.masked_fill(~valid, 0.0), log_i.masked_fill(~valid, float("-inf"))
        run = partial(mlstm_chunkwise, chunk_size=self.chunk_size) if parallel else mlstm_recurrence
        h, memory, normaliser, stabiliser = run(q, k, v, log_i, log_f, memory, normaliser, stabiliser)
        h = F.layer_norm(h, (self.head_size,)) * self.head_norm
        out = torch.sigmoid(o) * h  # (B, T, heads, d)
        return out.flatten(2), self.layout.pack(memory, normaliser, stabiliser)


@torch.jit.script
def slstm_recurrence(
    projected: torch.Tensor,
    recurrent: torch.Tensor,
    valid: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    n: torch.Tensor,
    m: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sLSTM step by step. ``projected`` ``(B, T, heads, 4d)``: the input's part of the gates
    ``[z, i, f, o]`` per head; ``recurrent`` ``(heads, d, 4d)``; ``valid`` ``(B, T, 1)`` (0 past a row's
    length: its state stays); state ``h, c, n, m`` ``(B, heads, d)`` each. Returns every ``h`` and the state."""
    outputs: list[torch.Tensor] = []
    for t in range(projected.size(1)):
        gates = projected[:, t] + torch.einsum("bhd,hde->bhe", h, recurrent)  # (B, heads, 4d)
        z, log_i, f, o = gates.chunk(4, dim=-1)  # (B, heads, d) each
        log_f = log_sigmoid(f)
        new_m = torch.maximum(log_f + m, log_i)
        write, forget = torch.exp(log_i - new_m), torch.exp(log_f + m - new_m)
        new_c = forget * c + write * torch.tanh(z)
        new_n = forget * n + write
        # n >= write > 0 in exact arithmetic; the floor only stops an underflowed exp from dividing 0 by 0.
        new_h = torch.sigmoid(o) * new_c / new_n.clamp_min(1e-30)
        keep = valid[:, t].unsqueeze(-1) > 0  # (B, 1, 1)
        h, c = torch.where(keep, new_h, h), torch.where(keep, new_c, c)
        n, m = torch.where(keep, new_n, n), torch.where(keep, new_m, m)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c, n, m


class SLSTMCell(nn.Module):
    """One direction of an ``slstm`` layer: ``(B, T, F)`` -> ``(B, T, H)`` in ``heads`` heads of ``H / heads``."""

    def __init__(self, input_size: int, hidden_size: int, heads: int = 4, **_):
        super().__init__()
        self.heads, self.head_size = heads, hidden_size // heads
        d = self.head_size
        self.input_proj = nn.Linear(input_size, 4 * hidden_size)  # per head [z, i, f, o], d each
        self.recurrent = nn.Parameter(torch.empty(heads, d, 4 * d))  # block-diagonal: each head reads its own h
        self.layout = StateLayout(h=(heads, d), c=(heads, d), n=(heads, d), m=(heads, d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.recurrent, -1 / math.sqrt(self.head_size), 1 / math.sqrt(self.head_size))
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        d = self.head_size
        with torch.no_grad():
            bias = self.input_proj.bias.view(self.heads, 4, d)
            bias[:, 1].zero_()  # input gate
            bias[:, 2].copy_(_forget_bias(self.heads).unsqueeze(-1).expand(-1, d))

    def forward(self, x, state, lengths, valid, parallel: bool):
        h, c, n, m = self.layout.unpack(state)
        projected = split_heads(self.input_proj(x), self.heads)  # (B, T, heads, 4d)
        keep = torch.ones_like(x[..., :1]) if valid is None else valid.to(x.dtype)  # (B, T, 1)
        outputs, h, c, n, m = slstm_recurrence(projected, self.recurrent, keep, h, c, n, m)
        return outputs.flatten(2), self.layout.pack(h, c, n, m)
