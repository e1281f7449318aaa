"""Encoder-decoder RNNs for translation (Sutskever et al. 2014, Cho et al. 2014, Bahdanau et al.
2015, Luong et al. 2015), with a one-step decoder so that greedy and beam search (and an exported
step graph) all drive the same function.
"""

import warnings
from dataclasses import replace
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from zoo.cells.modern import MODERN_CELLS
from zoo.cells.recurrent import CELLS, CellType, Nonlinearity, RecurrentInit, StackConfig, State, map_state
from zoo.common import decoding
from zoo.networks.attention import Attention, AttentionType
from zoo.networks.pooling import last_layer_state, valid_mask

Context = Literal["initial", "every_step", "attention"]
CONTEXTS = ("initial", "every_step", "attention")


class Memory(NamedTuple):
    """What the decoder reads from the encoded source (batch first)."""

    outputs: torch.Tensor  # (B, S, M) encoder outputs
    mask: torch.Tensor  # (B, S) True at valid source positions
    summary: torch.Tensor  # (B, M) final encoder state, both directions
    keys: torch.Tensor | None  # (B, S, ·) attention keys, computed once per source


class DecoderState(NamedTuple):
    rnn: State  # (num_layers, B, H), a (h, c) pair for an LSTM
    feed: torch.Tensor | None  # (B, H) previous attentional vector (Luong input feeding)


class Seq2Seq(nn.Module):
    """Recurrent encoder-decoder.

    Args:
        source_vocab_size, target_vocab_size: set by the data.
        embedding_dim: source and target embeddings (and the output layer's input size).
        hidden_size: encoder units per direction; the decoder has ``hidden_size * directions``.
        num_layers, cell, dropout, recurrent_init, nonlinearity: both recurrent stacks (see ``RecurrentStack``).
        bidirectional_encoder: a BiRNN encoder; its final states seed the decoder through a
            ``tanh`` bridge.
        context: how the decoder sees the source: ``initial`` (only as its initial state, Sutskever),
            ``every_step`` (the final encoder state fed at every step, Cho) or ``attention``.
        attention: ``bahdanau`` (additive, queried with the previous decoder state, the context
            enters the recurrence) or Luong's ``dot`` / ``general`` (queried with the current state,
            combined into an attentional vector).
        input_feeding: Luong attention only: feed the previous attentional vector back as input.
        tie_weights: share the target embedding with the output projection (``tie_embeddings``: its
            old name, still accepted).
    """

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        embedding_dim: int = 256,
        hidden_size: int = 256,
        num_layers: int = 1,
        cell: CellType = "gru",
        bidirectional_encoder: bool = True,
        dropout: float = 0.2,
        context: Context = "attention",
        attention: AttentionType = "bahdanau",
        input_feeding: bool = False,
        tie_weights: bool = False,
        tie_embeddings: bool | None = None,
        recurrent_init: RecurrentInit = "default",
        nonlinearity: Nonlinearity = "tanh",
    ):
        super().__init__()
        if tie_embeddings is not None:
            warnings.warn("tie_embeddings is deprecated: use tie_weights", DeprecationWarning, stacklevel=2)
            tie_weights = tie_embeddings
        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}; choose one of {', '.join(CONTEXTS)}")
        if cell in MODERN_CELLS:
            # The bridge sets the decoder's initial state from the encoder's summary; a modern cell's
            # state is a packed memory that such a vector does not fill.
            classic = ", ".join(c for c in CELLS if c not in MODERN_CELLS)
            raise ValueError(f"the translator does not take the {cell!r} cell: choose one of {classic}")
        uses_luong = context == "attention" and attention != "bahdanau"
        if input_feeding and not uses_luong:
            raise ValueError("input_feeding needs Luong attention (context='attention', attention 'dot' or 'general')")
        self.context, self.input_feeding, self.cell = context, input_feeding, cell
        self.luong = uses_luong
        self.source_embedding = nn.Embedding(source_vocab_size, embedding_dim)
        self.target_embedding = nn.Embedding(target_vocab_size, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        stack = StackConfig.pick(locals())
        self.encoder = replace(stack, bidirectional=bidirectional_encoder).build(embedding_dim, hidden_size)
        memory_size = self.encoder.output_size
        decoder_size = memory_size
        self.num_layers, self.decoder_size = num_layers, decoder_size
        self.bridge = nn.Linear(memory_size, num_layers * decoder_size)

        decoder_input, features = embedding_dim, decoder_size
        self.attention = None
        if context == "every_step" or (context == "attention" and not uses_luong):
            decoder_input, features = embedding_dim + memory_size, decoder_size + memory_size
        if context == "attention":
            self.attention = Attention(attention, decoder_size, memory_size)
        if uses_luong:
            self.combine = nn.Linear(memory_size + decoder_size, decoder_size)
            decoder_input += decoder_size if input_feeding else 0
        self.decoder = stack.build(decoder_input, decoder_size)
        self.pre_output = nn.Linear(features, embedding_dim)
        self.output = nn.Linear(embedding_dim, target_vocab_size)
        if tie_weights:
            self.output.weight = self.target_embedding.weight

    @property
    def parallel_decoding(self) -> bool:
        """Teacher-forced steps can run as one fused call (no step depends on the previous output)."""
        return self.context != "attention" or (self.luong and not self.input_feeding)

    def encode(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple[Memory, DecoderState]:
        """``source`` ``(B, S)`` padded ids, ``lengths`` ``(B,)`` -> memory and the decoder's initial state."""
        outputs, state = self.encoder(self.dropout(self.source_embedding(source)), lengths=lengths)
        summary = last_layer_state(state, self.encoder.num_directions)
        batch = source.size(0)
        initial = torch.tanh(self.bridge(summary)).view(batch, self.num_layers, self.decoder_size)
        initial = initial.transpose(0, 1).contiguous()
        extra = [torch.zeros_like(initial) for _ in self.decoder.state_names[1:]]  # an LSTM's cell state
        rnn_state = (initial, *extra) if extra else initial
        feed = outputs.new_zeros(batch, self.decoder_size) if self.input_feeding else None
        keys = self.attention.keys(outputs) if self.attention is not None else None
        mask = valid_mask(lengths.to(source.device), source.size(1))
        return Memory(outputs, mask, summary, keys), DecoderState(rnn_state, feed)

    def _decode(self, embedded: torch.Tensor, state: DecoderState, memory: Memory):
        """Decode ``embedded`` ``(B, T, E)`` target inputs (T > 1 only when ``parallel_decoding``)."""
        weights, feed = None, state.feed
        steps = embedded.size(1)
        if self.context == "initial":
            out, rnn_state = self.decoder(embedded, state.rnn)
            features = out
        elif self.context == "every_step":
            context = memory.summary.unsqueeze(1).expand(-1, steps, -1)
            out, rnn_state = self.decoder(torch.cat([embedded, context], dim=-1), state.rnn)
            features = torch.cat([out, context], dim=-1)
        elif not self.luong:  # Bahdanau: attend with the previous state, then step
            previous = (state.rnn[0] if isinstance(state.rnn, tuple) else state.rnn)[-1].unsqueeze(1)
            context, weights = self.attention(previous, memory.keys, memory.outputs, memory.mask)
            out, rnn_state = self.decoder(torch.cat([embedded, context], dim=-1), state.rnn)
            features = torch.cat([out, context], dim=-1)
        else:  # Luong: step, then attend with the new state
            inputs = torch.cat([embedded, feed.unsqueeze(1)], dim=-1) if self.input_feeding else embedded
            out, rnn_state = self.decoder(inputs, state.rnn)
            context, weights = self.attention(out, memory.keys, memory.outputs, memory.mask)
            features = torch.tanh(self.combine(torch.cat([context, out], dim=-1)))
            feed = features[:, -1] if self.input_feeding else None
        logits = self.output(torch.tanh(self.pre_output(self.dropout(features))))
        return logits, DecoderState(rnn_state, feed), weights

    def decode_step(
        self, tokens: torch.Tensor, state: DecoderState, memory: Memory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """One step: previous tokens ``(B,)`` -> logits ``(B, V)``, new state, attention ``(B, S)`` or None."""
        embedded = self.dropout(self.target_embedding(tokens)).unsqueeze(1)
        logits, state, weights = self._decode(embedded, state, memory)
        return logits.squeeze(1), state, None if weights is None else weights.squeeze(1)

    def forward(
        self, source: torch.Tensor, lengths: torch.Tensor, target_in: torch.Tensor, teacher_forcing: float = 1.0
    ) -> torch.Tensor:
        """Logits ``(B, T, V)`` for ``target_in`` ``(B, T)`` (``<bos>`` then the target, shifted).

        ``teacher_forcing`` < 1 (scheduled sampling, Bengio et al. 2015): each step's input is the
        reference token with that probability, else the model's own previous prediction.
        """
        memory, state = self.encode(source, lengths)
        if self.parallel_decoding and teacher_forcing >= 1.0:
            return self._decode(self.dropout(self.target_embedding(target_in)), state, memory)[0]
        tokens, all_logits = target_in[:, 0], []
        for t in range(target_in.size(1)):
            logits, state, _ = self.decode_step(tokens, state, memory)
            all_logits.append(logits)
            if t + 1 < target_in.size(1):
                tokens = target_in[:, t + 1]
                if teacher_forcing < 1.0:
                    use_reference = torch.rand(tokens.shape, device=tokens.device) < teacher_forcing
                    tokens = torch.where(use_reference, tokens, logits.argmax(-1))
        return torch.stack(all_logits, dim=1)

    @staticmethod
    def select(state: DecoderState, index: torch.Tensor) -> DecoderState:
        """Rows ``index`` of a decoder state (beam search reordering)."""
        rnn = map_state(state.rnn, lambda s: s.index_select(1, index))
        return DecoderState(rnn, None if state.feed is None else state.feed.index_select(0, index))

    @staticmethod
    def select_memory(memory: Memory, index: torch.Tensor) -> Memory:
        return Memory(*(None if t is None else t.index_select(0, index) for t in memory))


@torch.no_grad()
def translate_ids(
    model: Seq2Seq,
    source: torch.Tensor,
    lengths: torch.Tensor,
    bos: int,
    eos: int,
    beam_size: int = decoding.BEAM_SIZE,
    max_new_tokens: int | None = None,
    length_penalty: float = decoding.LENGTH_PENALTY,
    attention: list[np.ndarray] | None = None,
) -> list[list[int]]:
    """Target ids of padded sources ``(B, S)`` by ``zoo.common.decoding``'s greedy (``beam_size`` 1) or beam
    search, without ``<bos>``/``<eos>``; ``max_new_tokens`` None: ``decoding.default_max_new_tokens``.
    Greedy decoding appends each step's attention weights ``(B, S)`` to ``attention`` when given."""
    max_new_tokens = max_new_tokens or decoding.default_max_new_tokens(lengths.tolist())
    memory, state = model.encode(source, lengths)
    batch = source.size(0)

    def step(tokens: np.ndarray, state: DecoderState):
        logits, state, weights = model.decode_step(torch.from_numpy(tokens).to(source.device), state, memory)
        if attention is not None and weights is not None:
            attention.append(weights.float().cpu().numpy())
        return logits.float().cpu().numpy(), state

    def select(state: DecoderState, rows: np.ndarray) -> DecoderState:
        return model.select(state, torch.from_numpy(rows).to(source.device))

    if beam_size == 1:
        return decoding.greedy(step, state, batch, bos, eos, max_new_tokens)
    rows = torch.from_numpy(decoding.beam_rows(batch, beam_size)).to(source.device)
    memory, state = model.select_memory(memory, rows), model.select(state, rows)
    return decoding.beam_search(step, select, state, batch, beam_size, bos, eos, max_new_tokens, length_penalty)
