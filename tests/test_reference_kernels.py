"""The xLSTM cells against the authors' own PyTorch kernels (NX-AI's ``mlstm_kernels`` and ``xlstm``).

Their CUDA/Triton backends need a GPU; their native PyTorch ones run anywhere and are the oracle
here: the same projections of our layer are fed to their recurrence, and its outputs and final
state must be ours, in both our forms (chunkwise with gradients, the step loop without).
"""

import math

import pytest
import torch
from mlstm_kernels.torch.recurrent.native_sequence import mlstm_recurrent_sequence__native_fw
from torch.nn import functional as F
from xlstm.blocks.slstm.src.vanilla import slstm_forward
from xlstm.blocks.slstm.src.vanilla.slstm import slstm_forward_pointwise

from tests.test_modern import small_chunks
from zoo.cells.modern import ModernRecurrence

BATCH, TIME, FEATURES, HIDDEN, HEADS = 3, 11, 5, 8, 2


def cell_parts(layer, state):
    """The cell's own state parts in one direction's packed state (``ModernRecurrence.layout``)."""
    _, inner = layer.layout.unpack(state[0].detach())
    return layer.directions[0].layout.unpack(inner)


def layer_and_input(cell: str):
    torch.manual_seed(0)
    layer = small_chunks(ModernRecurrence(cell, FEATURES, HIDDEN, heads=HEADS).double())
    return layer, torch.randn(BATCH, TIME, FEATURES, dtype=torch.float64)


@pytest.mark.parametrize("grad", [True, False])  # chunkwise-parallel with gradients, the step loop without
def test_mlstm_equals_the_authors_native_recurrence(grad):
    layer, x = layer_and_input("mlstm")
    cell, d = layer.directions[0], HIDDEN // HEADS
    # A state from an earlier call, so that the initial state's handling is compared too.
    with torch.no_grad():
        first_state = layer(torch.randn(BATCH, 4, FEATURES, dtype=torch.float64))[1]
    memory, normaliser, stabiliser = cell_parts(layer, first_state)
    with torch.set_grad_enabled(grad):
        out, state = layer(x, first_state)
    with torch.no_grad():
        # (B, heads, T, d), as their kernels take them; they scale q by 1/sqrt(d) where we scale k.
        q, k, v, o = (part.unflatten(-1, (HEADS, d)).transpose(1, 2) for part in cell.qkvo(x).chunk(4, dim=-1))
        i, f = (gate.transpose(1, 2) for gate in cell.gates(x).chunk(2, dim=-1))  # (B, heads, T)
        scale = math.sqrt(d)  # their memory and normaliser hold unscaled keys: sqrt(d) times ours
        h, (their_memory, their_normaliser, their_stabiliser) = mlstm_recurrent_sequence__native_fw(
            q, k, v, i, f, memory * scale, normaliser * scale, stabiliser.unsqueeze(-1),
            return_last_states=True, eps=0.0, dtype_state=torch.float64,
        )  # fmt: skip
        expected = torch.sigmoid(o) * F.layer_norm(h, (d,)) * cell.head_norm.unsqueeze(1)  # (B, heads, T, d)
    torch.testing.assert_close(out.detach(), expected.transpose(1, 2).flatten(2))
    got_memory, got_normaliser, got_stabiliser = cell_parts(layer, state)
    torch.testing.assert_close(got_memory * scale, their_memory)
    torch.testing.assert_close(got_normaliser * scale, their_normaliser)
    torch.testing.assert_close(got_stabiliser, their_stabiliser.squeeze(-1))


GATE_ORDER = [1, 2, 0, 3]  # ours per head [z, i, f, o]; theirs [i, f, z, o]


def test_slstm_equals_the_authors_vanilla_recurrence():
    layer, x = layer_and_input("slstm")
    cell, d = layer.directions[0], HIDDEN // HEADS
    out, state = layer(x)
    with torch.no_grad():
        # Their input part of the gates is (T, B, [gate, head, d]); their recurrent kernel (heads, [gate, d], d).
        projected = cell.input_proj(x).view(BATCH, TIME, HEADS, 4, d)[..., GATE_ORDER, :]
        projected = projected.permute(1, 0, 3, 2, 4).reshape(TIME, BATCH, 4 * HIDDEN)
        recurrent = cell.recurrent.view(HEADS, d, 4, d)[:, :, GATE_ORDER].reshape(HEADS, d, 4 * d).transpose(1, 2)
        zero_bias = torch.zeros(4 * HIDDEN, dtype=torch.float64)
        zero_state = torch.zeros(4, BATCH, HIDDEN, dtype=torch.float64)  # y, c, n, m
        every, last, _ = slstm_forward(projected, zero_state, recurrent, zero_bias, slstm_forward_pointwise)
    torch.testing.assert_close(out.detach(), every[0, 1:].transpose(0, 1))  # every step's h
    h, c, n, _ = cell_parts(layer, state)
    # Their first step takes m = i~ where ours takes max(log f + 0, i~): both valid stabilisers, which scale
    # c and n alike, so h and c / n must agree.
    torch.testing.assert_close(h.flatten(1), last[0])
    torch.testing.assert_close((c / n).flatten(1), last[1] / last[2])
