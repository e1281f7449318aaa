"""The configurable recurrent stack every zoo model is built on.

Cells ``rnn`` (Elman, tanh or ReLU), ``lstm`` and ``gru`` run on the fused ``nn.RNN``/``nn.LSTM``/``nn.GRU``
kernels (cuDNN on GPU, oneDNN on CPU); ``gated`` and ``jordan`` are explicit loops (see ``zoo.cells.loop``);
``mingru`` and ``minlstm`` (Feng et al. 2024) train with a log-space parallel scan (see ``zoo.cells.minimal``);
``mlstm``, ``slstm`` (xLSTM), ``mamba2`` and ``rglru`` (Hawk) are today's recurrences (see ``zoo.cells.modern``).
Layers are kept as separate modules so that dropout (standard or locked) and residual connections
can sit between them.
"""

from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

from zoo.cells.blocks import BLOCKS, Block, ResidualMLPBlock, RMSNorm
from zoo.cells.fused import FusedBidirectional, run_to_lengths
from zoo.cells.loop import LOOP_CELLS, LoopRecurrence
from zoo.cells.minimal import MINIMAL_CELLS, MinimalRecurrence
from zoo.cells.modern import MODERN_CELLS, ModernRecurrence
from zoo.networks.dropout import make_dropout

FUSED_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELLS = tuple(FUSED_CELLS) + tuple(LOOP_CELLS) + tuple(MINIMAL_CELLS) + tuple(MODERN_CELLS)
# The cells that exist, as the type LightningCLI checks flags against: a new cell registers in its
# module's table and is a choice here without another edit (a Literal of a tuple is of its items).
CellType = Literal[CELLS]
RecurrentInit = Literal["default", "orthogonal", "identity"]
RECURRENT_INITS = get_args(RecurrentInit)
Nonlinearity = Literal["tanh", "relu"]

# An LSTM state is (h, c); every other cell carries one tensor. Shapes follow torch:
# (num_layers * num_directions, batch, state_size), where state_size is hidden_size but for the
# modern cells, which pack more than a vector (zoo.cells.packed_state).
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def map_state(state: State | None, fn) -> State | None:
    """Apply ``fn`` to every tensor of a state, tuples nested or not (``None`` stays ``None``)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(map_state(s, fn) for s in state)
    return fn(state)


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a truncated-BPTT boundary, keeping the values."""
    return map_state(state, torch.Tensor.detach)


def recurrences(module: nn.Module) -> list[tuple[nn.Parameter, list[nn.Parameter]]]:
    """Every hidden-to-hidden matrix in ``module`` (gate blocks stacked, ``(gates * H, H)``), each
    with the biases added to its product: one per layer and direction."""
    found = []
    for m in module.modules():
        if isinstance(m, nn.RNNBase):
            for name, weight in m.named_parameters():
                if name.startswith("weight_hh"):
                    suffix = name.removeprefix("weight_hh")
                    found.append((weight, [getattr(m, "bias_ih" + suffix), getattr(m, "bias_hh" + suffix)]))
        elif hasattr(m, "recurrence"):
            found.append(m.recurrence())
    return found


@dataclass(frozen=True)
class StackConfig:
    """A ``RecurrentStack``'s options but its sizes. The models take them as flat arguments of the
    same names (LightningCLI flags and stored arguments), and build their stacks from one of these
    instead of passing the list along again."""

    num_layers: int = 1
    cell: CellType = "lstm"
    bidirectional: bool = False
    dropout: float = 0.0
    locked_dropout: bool = False
    residual: bool = False
    recurrent_init: RecurrentInit = "default"
    nonlinearity: Nonlinearity = "tanh"
    heads: int = 4
    block: Block = "none"
    slstm_at: list[int] | None = None

    @classmethod
    def pick(cls, arguments: dict, **changes) -> "StackConfig":
        """The options among ``arguments`` (a model's constructor arguments: its ``locals()``), with ``changes``."""
        names = {field.name for field in fields(cls)}
        return replace(cls(**{name: value for name, value in arguments.items() if name in names}), **changes)

    def build(self, input_size: int, hidden_size: int) -> "RecurrentStack":
        return RecurrentStack(input_size, hidden_size, **asdict(self))


class RecurrentStack(nn.Module):
    """``num_layers`` recurrent layers of one cell type, batch-first.

    Args:
        input_size: features per input step.
        hidden_size: units per direction in each layer.
        num_layers: depth of the stack.
        cell: one of ``rnn``, ``lstm``, ``gru``, ``gated``, ``jordan``, ``mingru``, ``minlstm``, ``mlstm``,
            ``slstm``, ``mamba2``, ``rglru``.
        bidirectional: run each layer in both directions and concatenate.
        dropout: dropout on the input of every layer after the first.
        locked_dropout: use one dropout mask per sequence instead of one per step.
        residual: add each layer's input to its output (layers after the first), as in GNMT.
        recurrent_init: ``default`` keeps torch's initialisation; ``orthogonal`` makes each
            hidden-to-hidden ``(H, H)`` gate block orthogonal (Saxe et al. 2014); ``identity`` makes
            each block the identity and zeroes the biases of the recurrence (the IRNN of Le et al.
            2015, with ``cell="rnn", nonlinearity="relu"``).
        nonlinearity: ``tanh`` or ``relu``, of the ``rnn`` cell only.
        heads: heads of the ``mlstm``, ``slstm`` and ``mamba2`` cells.
        block: ``none`` (bare layers) or ``residual_mlp``: each layer in a pre-norm residual block with
            a gated MLP, and a final RMSNorm (``zoo.cells.blocks``), as xLSTM, Griffin and minGRU stack them.
        slstm_at: with ``cell="mlstm"``, the layers (from 0) that are ``slstm`` instead: xLSTM's mixed
            ``[m:s]`` stacks (Beck et al. 2024), named as in their ``xLSTMBlockStackConfig``. The layers'
            states differ in size; each is stored in the first columns of the stack's widest.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        cell: CellType = "lstm",
        bidirectional: bool = False,
        dropout: float = 0.0,
        locked_dropout: bool = False,
        residual: bool = False,
        recurrent_init: RecurrentInit = "default",
        nonlinearity: Nonlinearity = "tanh",
        heads: int = 4,
        block: Block = "none",
        slstm_at: list[int] | None = None,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if recurrent_init not in RECURRENT_INITS:
            raise ValueError(f"unknown recurrent_init {recurrent_init!r}; choose one of {', '.join(RECURRENT_INITS)}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; choose tanh or relu")
        if nonlinearity != "tanh" and cell != "rnn":
            raise ValueError(f"nonlinearity={nonlinearity!r} applies to the 'rnn' cell only, not {cell!r}")
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of {', '.join(BLOCKS)}")
        if block != "none" and residual:
            raise ValueError(f"block={block!r} already adds each layer's input to its output: drop residual")
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        slstm_at = sorted(set(slstm_at or ()))
        if slstm_at and cell != "mlstm":
            raise ValueError(f"slstm_at mixes sLSTM layers into an mLSTM stack: it needs cell='mlstm', not {cell!r}")
        if any(not 0 <= i < num_layers for i in slstm_at):
            raise ValueError(f"slstm_at={slstm_at} names layers outside 0..{num_layers - 1}")
        self.cell = cell
        # The tensors of the state it carries: an LSTM's hidden and cell state, one tensor for every
        # other cell (the modern cells pack theirs into it, ``zoo.cells.packed_state``).
        self.state_names = ("h", "c") if FUSED_CELLS.get(cell) is nn.LSTM else ("h",)
        self.layer_cells = ["slstm" if i in slstm_at else cell for i in range(num_layers)]
        self.nonlinearity = nonlinearity
        self.recurrent_init = recurrent_init
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.residual = residual
        self.heads = heads
        self.layers = nn.ModuleList(
            self._make_layer(cell, input_size if i == 0 else self.output_size, bidirectional)
            for i, cell in enumerate(self.layer_cells)
        )
        self.blocks = None
        if block == "residual_mlp":
            sizes = [input_size] + [self.output_size] * (num_layers - 1)
            self.blocks = nn.ModuleList(ResidualMLPBlock(size, self.output_size) for size in sizes)
            self.final_norm = RMSNorm(self.output_size)
        self.inter_layer_dropout = make_dropout(dropout, locked_dropout)
        self.init_recurrent_weights()

    def _make_layer(self, cell: str, input_size: int, bidirectional: bool) -> nn.Module:
        options = {"nonlinearity": self.nonlinearity} if cell == "rnn" else {}
        if cell in FUSED_CELLS and bidirectional:
            return FusedBidirectional(FUSED_CELLS[cell], input_size, self.hidden_size, **options)
        if cell in FUSED_CELLS:
            return FUSED_CELLS[cell](input_size, self.hidden_size, batch_first=True, **options)
        if cell in MINIMAL_CELLS:
            return MinimalRecurrence(cell, input_size, self.hidden_size, bidirectional)
        if cell in MODERN_CELLS:
            return ModernRecurrence(cell, input_size, self.hidden_size, bidirectional, self.heads)
        return LoopRecurrence(cell, input_size, self.hidden_size, bidirectional)

    def init_recurrent_weights(self) -> None:
        """Apply ``recurrent_init`` and the initialisation that the modern cells and the blocks need
        (gate biases, decay rates, norm weights); a model that re-initialises all its parameters calls this after."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_special_parameters"):
                module.reset_special_parameters()
        if self.recurrent_init == "default":
            return
        found = recurrences(self)
        if not found:
            raise ValueError(
                f"the {self.cell!r} cell has no recurrent matrix of (H, H) gate blocks (its gates read only the "
                "input, or in the slstm a block-diagonal matrix per head), so "
                f"recurrent_init={self.recurrent_init!r} has nothing to set: use recurrent_init='default'"
            )
        init_block = nn.init.orthogonal_ if self.recurrent_init == "orthogonal" else nn.init.eye_
        with torch.no_grad():
            for weight, biases in found:
                for block in weight.split(self.hidden_size):  # one (H, H) block per gate
                    init_block(block)
                if self.recurrent_init == "identity":
                    for bias in biases:
                        bias.zero_()

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.num_directions

    @property
    def state_size(self) -> int:
        """Columns of each layer's state: ``hidden_size``, or a modern cell's packed parts (the widest
        layer's, in a mixed stack)."""
        return max(self._layer_state_size(layer) for layer in self.layers)

    def _layer_state_size(self, layer: nn.Module) -> int:
        return layer.state_size if isinstance(layer, ModernRecurrence) else self.hidden_size

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        zeros = torch.zeros(
            self.num_layers * self.num_directions, batch_size, self.state_size, device=device, dtype=dtype
        )
        return zeros if len(self.state_names) == 1 else tuple(zeros.clone() for _ in self.state_names)

    def _layer_state(self, state: State | None, i: int) -> State | None:
        rows = slice(i * self.num_directions, (i + 1) * self.num_directions)
        columns = slice(0, self._layer_state_size(self.layers[i]))
        return map_state(state, lambda s: s[rows, :, columns].contiguous())

    def _run_layer(self, layer: nn.Module, x, state, lengths):
        if isinstance(layer, LoopRecurrence | MinimalRecurrence | ModernRecurrence):
            return layer(x, state, lengths)
        run = layer if isinstance(layer, FusedBidirectional) else partial(run_to_lengths, layer)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no low-precision RNN primitive on most CPUs ("could not create a primitive
            # descriptor"), so under CPU autocast the fused recurrence runs in float32.
            with torch.autocast("cpu", enabled=False):
                return run(x.float(), map_state(state, torch.Tensor.float), lengths)
        return run(x, state, lengths)

    def forward(
        self, x: torch.Tensor, state: State | None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """``x``: ``(B, T, input_size)``; ``lengths``: valid steps per sequence (each row stops there).

        Returns the last layer's outputs ``(B, T, output_size)`` and the final state of every layer.
        """
        final_states = []
        for i, layer in enumerate(self.layers):
            layer_input = x if i == 0 else self.inter_layer_dropout(x)
            if self.blocks is None:
                out, layer_state = self._run_layer(layer, layer_input, self._layer_state(state, i), lengths)
                x = out + x if self.residual and i > 0 else out
            else:
                block = self.blocks[i]
                out, layer_state = self._run_layer(layer, block.norm(layer_input), self._layer_state(state, i), lengths)
                x = block.finish(layer_input, out)
            # A mixed stack's narrower layer states are padded with zeros to the widest.
            padding = (0, self.state_size - self._layer_state_size(layer))
            final_states.append(map_state(layer_state, lambda s, padding=padding: F.pad(s, padding)))
        if self.blocks is not None:
            x = self.final_norm(x)
        if len(self.state_names) > 1:
            return x, tuple(torch.cat(parts) for parts in zip(*final_states, strict=True))
        return x, torch.cat(final_states)
