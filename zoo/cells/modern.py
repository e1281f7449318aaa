"""Today's recurrent layers (``mlstm``, ``slstm``, ``mamba2``, ``rglru``) behind one calling convention.

``forward(x (B, T, F), state (D, B, S), lengths (B,) or None) -> (output (B, T, D*H), state)``, as
``zoo.cells.loop.LoopRecurrence``. Each direction's state is packed into ``S`` columns
(``zoo.cells.packed_state``): first its last output (``H``, what "last state" pooling reads, as an LSTM's
``h``), then the cell's own parts. Steps past a sequence's length leave the state unchanged and output
zeros. With gradients each cell runs its parallel (chunkwise) form; without them (evaluation,
generation, ``torch.onnx.export``) its exact step-by-step recurrence.
"""

from functools import partial

import torch
from torch import nn

from zoo.cells.loop import run_directions
from zoo.cells.mamba2 import Mamba2Mixer
from zoo.cells.packed_state import StateLayout
from zoo.cells.rglru import RGLRUBlock
from zoo.cells.xlstm import MLSTMCell, SLSTMCell
from zoo.networks.pooling import valid_mask

MODERN_CELLS = {"mlstm": MLSTMCell, "slstm": SLSTMCell, "mamba2": Mamba2Mixer, "rglru": RGLRUBlock}
HEADED_WIDTH = {"mlstm": 1, "slstm": 1, "mamba2": 2}  # the width split into heads, in units of H


class ModernRecurrence(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden_size: int, bidirectional: bool = False, heads: int = 4):
        super().__init__()
        if cell in HEADED_WIDTH and (HEADED_WIDTH[cell] * hidden_size) % heads:
            raise ValueError(
                f"the {cell!r} cell splits {HEADED_WIDTH[cell] * hidden_size} units into heads={heads}, "
                "which does not divide them: choose heads that divide it"
            )
        self.hidden_size = hidden_size
        directions = 2 if bidirectional else 1
        self.directions = nn.ModuleList(
            MODERN_CELLS[cell](input_size, hidden_size, heads=heads) for _ in range(directions)
        )
        self.layout = StateLayout(output=(hidden_size,), cell=(self.directions[0].layout.size,))

    @property
    def state_size(self) -> int:
        return self.layout.size

    def _run(self, cell: nn.Module, x, state, lengths=None, valid=None):
        _, inner = self.layout.unpack(state)
        parallel = torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export()
        out, inner = cell(x, inner, lengths, valid, parallel)  # (B, T, H), (B, S - H)
        if valid is None:
            return out, self.layout.pack(out[:, -1], inner)
        out = out * valid
        last = out.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.size(-1))).squeeze(1)  # (B, H)
        return out, self.layout.pack(last, inner)

    def forward(self, x, state=None, lengths=None):
        if torch.is_autocast_enabled(x.device.type):
            # The recurrences take exponentials of running sums and normalise by them: in float16 or
            # bfloat16 they lose every digit, so under autocast the layer runs in float32.
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.float(), None if state is None else state.float(), lengths)
        if state is None:
            state = x.new_zeros(len(self.directions), x.size(0), self.state_size)
        valid = None
        if lengths is not None:
            lengths = lengths.to(x.device)
            valid = valid_mask(lengths, x.size(1)).unsqueeze(-1)  # (B, T, 1); the same for a reversed row
        return run_directions(partial(self._run, lengths=lengths, valid=valid), self.directions, x, state, lengths)
