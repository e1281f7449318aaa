"""minGRU and minLSTM: recurrences whose gates read only the current input, and their parallel scan.

Feng, Tung, Ahmed, Bengio and Hajimirsadeghi (2024), "Were RNNs All We Needed?" (arXiv:2410.01201),
drop the hidden state from the gates of a GRU and an LSTM:

    minGRU   z_t = sigmoid(W_z x_t),  h_t = (1 - z_t) * h_{t-1} + z_t * g(W_h x_t)
    minLSTM  f_t = sigmoid(W_f x_t),  i_t = sigmoid(W_i x_t),  f'_t, i'_t = f_t, i_t / (f_t + i_t)
             h_t = f'_t * h_{t-1} + i'_t * g(W_h x_t)

with ``g(x) = x + 0.5`` for ``x >= 0`` and ``sigmoid(x)`` below, which is always positive. Both are
``h_t = a_t * h_{t-1} + b_t`` with ``a_t, b_t > 0`` known for every step at once, so training runs the
whole sequence through Heinsen's (2023) log-space scan ("Efficient Parallelization of a Ubiquitous
Sequential Computation", arXiv:2311.06281): a cumulative sum and a ``logcumsumexp`` instead of T steps.
Inference can still go one step at a time (``step``), and ONNX export runs the same recurrence as an
ONNX Loop (``linear_recurrence``), since ``logcumsumexp`` has no numerically safe ONNX form.
"""

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from zoo.cells.loop import run_directions
from zoo.networks.pooling import valid_mask


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below (continuous at 0)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """``log(g(x))`` without forming ``g``: ``log(sigmoid(x)) = -softplus(-x)`` stays finite for very negative x."""
    # torch.where back-propagates zeros into the branch it did not pick, and 0 / 0 there (log at x = -0.5)
    # would still be NaN: the relu keeps the unused branch's argument >= 0.5.
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


class MinimalCell(nn.Module):
    """``h_t = a_t * h_{t-1} + b_t`` with ``a_t``, ``b_t`` from ``x_t`` alone, given linearly (``coefficients``,
    for stepping) and as logarithms (``log_coefficients``, for the scan) from the projected input."""

    def __init__(self, input_size: int, hidden_size: int, parts: int):
        super().__init__()
        self.input_proj = nn.Linear(input_size, parts * hidden_size)

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_proj(x)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of inference: input ``x_t`` ``(B, F)`` and ``h_{t-1}`` ``(B, H)`` -> ``h_t`` ``(B, H)``."""
        a, b = self.coefficients(self.project_input(x))
        return a * h + b


class MinGRUCell(MinimalCell):
    """minGRU: ``a_t = 1 - z_t``, ``b_t = z_t * g(W_h x_t)`` with ``z_t = sigmoid(W_z x_t)``."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, 2)  # [update gate, candidate]

    def coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, candidate = projected.chunk(2, dim=-1)
        z = torch.sigmoid(gate)
        return torch.sigmoid(-gate), z * g(candidate)  # 1 - z as sigmoid(-gate): accurate where z rounds to 1

    def log_coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, candidate = projected.chunk(2, dim=-1)
        # log(1 - sigmoid(k)) = -softplus(k) and log(sigmoid(k)) = -softplus(-k): no log of a rounded 0.
        return -F.softplus(gate), -F.softplus(-gate) + log_g(candidate)


class MinLSTMCell(MinimalCell):
    """minLSTM: ``a_t = f_t / (f_t + i_t)``, ``b_t = i_t / (f_t + i_t) * g(W_h x_t)``."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, 3)  # [forget gate, input gate, candidate]

    def coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        forget, input_gate, candidate = projected.chunk(3, dim=-1)
        f, i = torch.sigmoid(forget), torch.sigmoid(input_gate)
        return f / (f + i), i / (f + i) * g(candidate)

    def log_coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        forget, input_gate, candidate = projected.chunk(3, dim=-1)
        # With d = log i - log f: log(f / (f + i)) = -softplus(d) and log(i / (f + i)) = -softplus(-d).
        d = F.softplus(-forget) - F.softplus(-input_gate)
        return -F.softplus(d), -F.softplus(-d) + log_g(candidate)


MINIMAL_CELLS = {"mingru": MinGRUCell, "minlstm": MinLSTMCell}


def log_space_scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Every ``h_t = a_t * h_{t-1} + b_t`` from ``h0`` ``(B, H)`` and ``log a``, ``log b`` ``(B, T, H)``.

    Heinsen (2023): with ``A_t = a_1 ... a_t``, ``h_t = A_t * (h_0 + sum_{k<=t} b_k / A_k)``, and the sum
    is ``exp(logcumsumexp(log b_k - log A_k))``. ``h_0``, the first term of that sum, is kept out of the
    log: ``A_t * h_0`` needs no ``log(0)`` for the zero initial state (a NaN gradient otherwise) and is
    right for a state of any sign. A step with ``log a = 0`` and ``log b = -inf`` leaves ``h`` unchanged.
    The price of the parallel form is precision: ``log b_k - log A_k`` grows with T, so in float32 the
    relative error reaches about 1e-4 at T = 1024 where the sequential loop stays near 1e-7.
    """
    log_prefix = log_a.cumsum(dim=1)  # (B, T, H): log A_t
    log_inputs = log_prefix + torch.logcumsumexp(log_b - log_prefix, dim=1)  # (B, T, H)
    return log_prefix.exp() * h0.unsqueeze(1) + log_inputs.exp()  # (B, T, H)


# Scripted so that the ONNX exporter turns the loop over the (dynamic) sequence length into an ONNX
# Loop; tracing would unroll it for the example's length.
@torch.jit.script
def linear_recurrence(a: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Every ``h_t = a_t * h_{t-1} + b_t`` from ``h`` ``(B, H)`` and ``a``, ``b`` ``(B, T, H)``, step by step."""
    states: list[torch.Tensor] = []
    for t in range(a.size(1)):
        h = a[:, t] * h + b[:, t]  # (B, H)
        states.append(h)
    return torch.stack(states, dim=1)  # (B, T, H)


class MinimalRecurrence(nn.Module):
    """One minGRU or minLSTM layer with the calling convention of ``zoo.cells.loop.LoopRecurrence``.

    ``forward(x (B, T, F), state (D, B, H), lengths (B,) or None) -> (output (B, T, D*H), state)``.
    Steps past a sequence's length leave its state unchanged and output zeros. With gradients the whole
    sequence goes through the log-space scan; without them (inference, ``torch.onnx.export``) through the
    exact recurrence ``linear_recurrence``.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, bidirectional: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        directions = 2 if bidirectional else 1
        self.directions = nn.ModuleList(MINIMAL_CELLS[cell](input_size, hidden_size) for _ in range(directions))

    def _run(self, cell: MinimalCell, x, h, valid=None):
        # Both forms run in at least float32: the scan subtracts cumulative sums that grow with T, and
        # in bfloat16 (autocast) they would lose every digit.
        projected = cell.project_input(x)  # (B, T, k*H)
        projected = projected.to(torch.promote_types(projected.dtype, torch.float32))
        if torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export():
            # Training: the parallel scan, whose float32 error grows with T (about 1e-4 relative at T = 1024).
            log_a, log_b = cell.log_coefficients(projected)  # (B, T, H) each
            if valid is not None:  # log a = 0, log b = -inf past the length: the state stays
                log_a, log_b = log_a.masked_fill(~valid, 0.0), log_b.masked_fill(~valid, float("-inf"))
            states = log_space_scan(log_a, log_b, h)  # (B, T, H)
        else:
            # Inference and export: the exact step-by-step recurrence, the one the exported ONNX Loop runs,
            # so that evaluation and generation carry no scan error.
            a, b = cell.coefficients(projected)  # (B, T, H) each
            if valid is not None:  # a = 1, b = 0 past the length: the state stays
                a, b = a.masked_fill(~valid, 1.0), b.masked_fill(~valid, 0.0)
            states = linear_recurrence(a, b, h)  # (B, T, H)
        out = states if valid is None else states * valid
        return out, states[:, -1]

    def forward(self, x, state=None, lengths=None):
        if state is None:
            state = x.new_zeros(len(self.directions), x.size(0), self.hidden_size)
        valid = None
        if lengths is not None:
            lengths = lengths.to(x.device)
            valid = valid_mask(lengths, x.size(1)).unsqueeze(-1)  # (B, T, 1); the same for a reversed row
        return run_directions(partial(self._run, valid=valid), self.directions, x, state, lengths)
