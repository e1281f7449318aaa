"""Helpers of the chunkwise-parallel forms (Mamba-2's state-space dual, xLSTM's chunkwise mLSTM,
the RG-LRU's scan): split time into chunks and build each chunk's matrix of decays.

Inside a chunk of ``L`` steps every output is a weighted sum over the chunk's earlier steps, a few
``(L, L)`` matrix products; the state passes from chunk to chunk in ``T / L`` sequential steps. The
decays are differences of cumulative log-sums taken within one chunk only, so they stay bounded
whatever ``T`` is (the whole-sequence log-space scan's precision falls with ``T``).
"""

import torch
from torch.nn import functional as F


def split_chunks(x: torch.Tensor, chunk_size: int, fill: float = 0.0) -> torch.Tensor:
    """``(B, T, *rest)`` -> ``(B, n, L, *rest)``, padding the end of time with ``fill`` up to ``n * L`` steps."""
    pad = -x.size(1) % chunk_size
    if pad:
        widths = [0, 0] * (x.dim() - 2) + [0, pad]  # F.pad lists the last dimension first
        x = F.pad(x, widths, value=fill)
    return x.unflatten(1, (x.size(1) // chunk_size, chunk_size))


def decay_matrix(cumulative: torch.Tensor) -> torch.Tensor:
    """``(..., L, X)`` cumulative log-decays within a chunk -> ``(..., L, L, X)``: entry ``[t, k]`` is
    ``exp(cumulative[t] - cumulative[k])``, the decay from step ``k`` to step ``t``, for ``k <= t``; 0 above."""
    return causal_log_weights(cumulative).exp()


def causal_log_weights(cumulative: torch.Tensor) -> torch.Tensor:
    """The logarithm of ``decay_matrix``: ``-inf`` above the diagonal (masked before ``exp``, whose
    gradient at the masked entries is then exactly 0)."""
    steps = cumulative.size(-2)
    causal = torch.ones(steps, steps, dtype=torch.bool, device=cumulative.device).tril().unsqueeze(-1)  # (L, L, 1)
    difference = cumulative.unsqueeze(-2) - cumulative.unsqueeze(-3)  # (..., L, L, X)
    return difference.masked_fill(~causal, float("-inf"))


def diagonal_scan(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Every ``h_t = a_t * h_{t-1} + b_t`` (elementwise, ``0 < a_t <= 1``, ``b_t`` of any sign) from ``h0``
    ``(B, H)``, ``log a`` and ``b`` ``(B, T, H)``, chunk by chunk. Returns ``(B, T, H)``."""
    steps = b.size(1)
    log_a, b = split_chunks(log_a, chunk_size), split_chunks(b, chunk_size)  # (B, n, L, H); padding keeps h
    cumulative = log_a.cumsum(dim=2)  # (B, n, L, H)
    within = torch.einsum("bnlkh,bnkh->bnlh", decay_matrix(cumulative), b)  # from the chunk's own inputs
    from_start = cumulative.exp()  # (B, n, L, H): the decay of the state the chunk starts from
    h, chunks = h0, []
    for j in range(b.size(1)):
        chunk = within[:, j] + from_start[:, j] * h.unsqueeze(1)  # (B, L, H)
        chunks.append(chunk)
        h = chunk[:, -1]
    return torch.cat(chunks, dim=1)[:, :steps]
