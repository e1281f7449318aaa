"""Variable-length sequences through the fused ``nn.RNN``/``nn.LSTM``/``nn.GRU`` kernels.

``pack_padded_sequence`` gives the right answer, but on CPU a packed batch of unequal lengths
leaves the oneDNN kernel for a per-step path whose backward is about 25x slower (a 32 x 400
BiLSTM batch: 20 s against 0.8 s on a 2-core CPU). ``run_to_lengths`` gets the same outputs and
final states from one fused call per distinct length instead: the batch is sorted by length and
each call carries the state of the rows still running into the next stretch of steps. With
length-bucketed batches almost all steps fall in the first call.

Under ``torch.onnx.export`` both take the packed path instead: the exporter turns packing into the
``sequence_lens`` input of ONNX's own RNN/LSTM/GRU ops, so one fused op handles every length.
"""

import copy

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zoo.cells.loop import reverse_padded

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _rows(state, rows):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s[:, rows] for s in state)
    return state[:, rows]


def _cat_rows(pieces):
    if isinstance(pieces[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*pieces, strict=True))
    return torch.cat(pieces, dim=1)


def run_to_lengths(rnn: nn.RNNBase, x: torch.Tensor, state: State | None, lengths: torch.Tensor | None):
    """Run one-direction ``rnn`` over right-padded ``x`` ``(B, T, F)``, each row stopping at its length.

    Outputs past a row's length are zero and the returned state is each row's state after its last
    valid step, exactly as with packed sequences. Lengths must be >= 1.
    """
    if lengths is None:
        return rnn(x, state)
    if torch.onnx.is_in_onnx_export():
        return run_packed(rnn, x, state, lengths)
    lengths = lengths.to("cpu")
    if int(lengths.min()) < 1:
        raise ValueError("every sequence needs at least one step (a length of 0 was given)")
    if bool((lengths == x.size(1)).all()):
        return rnn(x, state)
    order = lengths.argsort(descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    order = order.to(x.device)
    x = x.index_select(0, order)
    if state is not None:
        state = _rows(state, order)
    batch = x.size(0)
    outputs, finished, start = [], [], 0
    for stop in sorted(set(sorted_lengths)):
        active = sum(length >= stop for length in sorted_lengths)
        out, state = rnn(x[:active, start:stop], state)
        outputs.append(F.pad(out, (0, 0, 0, 0, 0, batch - active)))
        still_running = sum(length > stop for length in sorted_lengths)
        finished.append(_rows(state, slice(still_running, active)))
        state = _rows(state, slice(0, still_running))
        start = stop
    outputs.append(x.new_zeros(batch, x.size(1) - start, outputs[0].size(-1)))
    restore = order.argsort()
    final_state = _cat_rows(finished[::-1])
    output = torch.cat(outputs, dim=1).index_select(0, restore)
    if isinstance(final_state, tuple):
        return output, tuple(s.index_select(1, restore).contiguous() for s in final_state)
    return output, final_state.index_select(1, restore).contiguous()


def run_packed(rnn: nn.RNNBase, x: torch.Tensor, state: State | None, lengths: torch.Tensor):
    """``run_to_lengths`` through ``pack_padded_sequence``: what the ONNX exporter understands."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, state = rnn(packed, state)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    # The exporter crashes on a packed RNN whose padded output is never read (a model that keeps
    # only the final state); adding an empty sum of it keeps it in the graph at no cost.
    keep_output = out[:1, :0].sum()
    if isinstance(state, tuple):
        return out, tuple(s + keep_output for s in state)
    return out, state + keep_output


class FusedBidirectional(nn.Module):
    """A bidirectional layer as two one-direction fused modules (so each can run to its lengths).

    Same calling convention and state layout as a bidirectional single-layer ``nn.LSTM``.
    """

    def __init__(self, rnn_class: type[nn.RNNBase], input_size: int, hidden_size: int, **options):
        """``options``: more keyword arguments of ``rnn_class`` (``nonlinearity`` of an ``nn.RNN``)."""
        super().__init__()
        self.directions = nn.ModuleList(
            rnn_class(input_size, hidden_size, batch_first=True, **options) for _ in range(2)
        )
        self.merged: nn.RNNBase | None = None  # the export form, set by prepare_for_onnx_export

    def forward(self, x, state=None, lengths=None):
        if torch.onnx.is_in_onnx_export():
            if self.merged is None:
                raise RuntimeError("export a copy made by zoo.cells.fused.prepare_for_onnx_export(network)")
            return self.merged(x, state) if lengths is None else run_packed(self.merged, x, state, lengths)
        forward_state = _direction(state, 0)
        backward_state = _direction(state, 1)
        out_fwd, state_fwd = run_to_lengths(self.directions[0], x, forward_state, lengths)
        out_bwd, state_bwd = run_to_lengths(self.directions[1], reverse_padded(x, lengths), backward_state, lengths)
        out = torch.cat([out_fwd, reverse_padded(out_bwd, lengths)], dim=-1)
        if isinstance(state_fwd, tuple):
            return out, tuple(torch.cat(pair) for pair in zip(state_fwd, state_bwd, strict=True))
        return out, torch.cat([state_fwd, state_bwd])

    def as_one_module(self) -> nn.RNNBase:
        """The equivalent bidirectional ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (one fused ONNX op when exported)."""
        forward, backward = self.directions
        options = {"nonlinearity": forward.nonlinearity} if isinstance(forward, nn.RNN) else {}
        merged = type(forward)(forward.input_size, forward.hidden_size, batch_first=True, bidirectional=True, **options)
        with torch.no_grad():
            for name, weight in forward.named_parameters():
                getattr(merged, name).copy_(weight)
                getattr(merged, f"{name}_reverse").copy_(getattr(backward, name))
        return merged.to(forward.weight_ih_l0.device)


def prepare_for_onnx_export(network: nn.Module) -> nn.Module:
    """An eval-mode copy of ``network`` whose bidirectional layers each run as one fused module.

    The merged modules are built here because building one while the exporter traces would record
    its random initialisation as graph operations.
    """
    network = copy.deepcopy(network).eval()
    for module in network.modules():
        if isinstance(module, FusedBidirectional):
            module.merged = module.as_one_module()
    return network


def _direction(state, i):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s[i : i + 1].contiguous() for s in state)
    return state[i : i + 1].contiguous()


class SingleStep(nn.Module):
    """One step of a one-layer, one-direction ``nn.GRU``/``nn.LSTM``/``nn.RNN``, exported as its gate
    equations: the export form of a decoder step (``deploy.graphs``), whose input is always one step.

    onnxruntime has no integer GRU, so with the fused ONNX op a ``--quantize int8`` decoder step kept
    its recurrence in float32, half of its time (batch 32 on one thread); as matrix products its
    weights are quantized with the rest. Outside the exporter it runs the fused module itself, so the
    export's check compares these equations with PyTorch's kernel.
    """

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        if rnn.num_layers != 1 or rnn.bidirectional or not rnn.batch_first or not rnn.bias:
            raise ValueError("SingleStep takes a one-layer, one-direction, batch-first recurrence with biases")
        self.rnn = rnn

    def forward(self, x: torch.Tensor, state: State | None = None):
        return self.equations(x, state) if torch.onnx.is_in_onnx_export() else self.rnn(x, state)

    def equations(self, x: torch.Tensor, state: State | None = None):
        """``x`` ``(B, 1, I)`` -> output ``(B, 1, H)`` and the state ``(1, B, H)`` (an ``(h, c)`` pair)."""
        rnn, is_lstm = self.rnn, isinstance(self.rnn, nn.LSTM)
        if state is None:
            zeros = x.new_zeros(1, x.size(0), rnn.hidden_size)
            state = (zeros, zeros) if is_lstm else zeros
        h = (state[0] if is_lstm else state).transpose(0, 1)  # (B, 1, H)
        from_input = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)
        from_state = F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
        if isinstance(rnn, nn.GRU):  # PyTorch's gate order: reset, update, new
            reset_i, update_i, new_i = from_input.chunk(3, dim=-1)
            reset_h, update_h, new_h = from_state.chunk(3, dim=-1)
            reset, update = torch.sigmoid(reset_i + reset_h), torch.sigmoid(update_i + update_h)
            new = torch.tanh(new_i + reset * new_h)
            out = new + update * (h - new)
            return out, out.transpose(0, 1)
        if is_lstm:  # input, forget, cell, output
            i, f, g, o = (from_input + from_state).chunk(4, dim=-1)
            c = torch.sigmoid(f) * state[1].transpose(0, 1) + torch.sigmoid(i) * torch.tanh(g)
            out = torch.sigmoid(o) * torch.tanh(c)
            return out, (out.transpose(0, 1), c.transpose(0, 1))
        activation = torch.tanh if rnn.nonlinearity == "tanh" else torch.relu
        out = activation(from_input + from_state)
        return out, out.transpose(0, 1)
