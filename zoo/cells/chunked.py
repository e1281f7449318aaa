"""Helpers of the parallel forms: chunks and their decay matrices (Mamba-2's state-space dual,
xLSTM's chunkwise mLSTM) and the scan of a per-channel diagonal recurrence (the RG-LRU).

Inside a chunk of ``L`` steps every output is a weighted sum over the chunk's earlier steps, a few
``(L, L)`` matrix products; the state passes from chunk to chunk in ``T / L`` sequential steps. The
decays are differences of cumulative log-sums taken within one chunk only, so they stay bounded
whatever ``T`` is (the whole-sequence log-space scan's precision falls with ``T``).
"""

import torch
from torch.nn import functional as F


def split_chunks(x: torch.Tensor, chunk_size: int, fill: float = 0.0) -> torch.Tensor:
    """``(B, T, *rest)`` -> ``(B, n, L, *rest)``, padding the end of time with ``fill`` up to ``n * L`` steps;
    ``L`` is ``chunk_size``, or ``T`` when shorter (one chunk, no padding: bptt 35 in chunks of 64 would
    spend most of the ``(L, L)`` products on padding)."""
    chunk_size = max(1, min(chunk_size, x.size(1)))
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


def diagonal_scan(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Every ``h_t = a_t * h_{t-1} + b_t`` (elementwise, ``0 < a_t <= 1``, ``b_t`` of any sign) from ``h0``
    ``(B, H)``, ``log a`` and ``b`` ``(B, T, H)``. Returns ``(B, T, H)``.

    A Hillis-Steele scan: after the round of shift ``s``, step ``t`` holds the composition of steps
    ``t - 2s + 1 .. t``, so ``ceil(log2 T)`` rounds of ``(B, T, H)`` elementwise work give every prefix.
    It multiplies decays (``<= 1``) and never divides by one, so it is exact at any ``T``; a chunked
    ``(L, L, H)`` decay matrix, as Mamba-2's scalar-decay SSD uses, costs ``L`` times more memory per
    channel here (the RG-LRU's decay is per channel): a training step of the 2x256 PTB model took 1,955 ms
    with it against 136 ms with this scan on a 2-core CPU."""
    shift = 1
    while shift < b.size(1):
        # compose (a, b) at t with the prefix ending at t - shift: b_t += a_t * b_{t-s}, a_t *= a_{t-s}
        b = torch.cat([b[:, :shift], b[:, shift:] + log_a[:, shift:].exp() * b[:, :-shift]], dim=1)
        log_a = torch.cat([log_a[:, :shift], log_a[:, shift:] + log_a[:, :-shift]], dim=1)
        shift *= 2
    return b + log_a.exp() * h0.unsqueeze(1)
