"""The graphs each task exports: a wrapper module per graph, example inputs and dynamic axes.

Language model: one graph (tokens + state -> logits + state). Classifier: one graph (tokens,
lengths -> logits). Tagger: one graph (-> emissions and Viterbi tag ids). Translator: an encoder
graph and an incremental decoder-step graph; for an ensemble, a pair per member (``member0.encoder.onnx``...).
Forecaster: one graph (a window in the data's units -> the forecast in the same units).

A classifier or tagger ensemble (``zoo.networks.ensemble``) is one graph with a single network's inputs and
outputs, so its export runs where a single network's does.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from deploy import signatures as names
from zoo.cells.fused import SingleStep
from zoo.common.formats import MemberSpec, StateSpec
from zoo.networks.classifier import SequenceClassifier
from zoo.networks.ensemble import Ensemble, Seq2SeqEnsemble
from zoo.networks.forecaster import Forecaster
from zoo.networks.language_model import RNNLanguageModel
from zoo.networks.pooling import valid_mask
from zoo.networks.seq2seq import DecoderState, Memory, Seq2Seq
from zoo.networks.tagger import SequenceTagger


@dataclass
class Graph:
    """One ONNX graph to write: a module, how to make example inputs, and its I/O names and axes."""

    file: str
    module: nn.Module
    make_inputs: Callable[[int, int, torch.Generator], tuple[torch.Tensor, ...]]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]

    def __post_init__(self):
        self.module.eval()  # a new wrapper starts in training mode, and the exporter restores that mode


@dataclass
class Interface:
    """A network's graphs and the roles of their tensors (written to ``config.json``, see
    ``zoo.common.formats.ExportConfig``): the state carried between calls and the translator's memory."""

    graphs: list[Graph]
    state: StateSpec = field(default_factory=StateSpec)
    memory: list[str] = field(default_factory=list)
    members: list[MemberSpec] | None = None  # a translator ensemble's: each its graphs, state, memory


class LanguageModelGraph(nn.Module):
    """tokens ``(B, T)`` and the state -> logits ``(B, T, V)`` and the new state: one graph scores a
    whole sequence (T = its length) or takes one generation step (T = 1)."""

    def __init__(self, network: RNNLanguageModel):
        super().__init__()
        self.network = network

    def forward(self, tokens, *state):
        logits, new_state = self.network(tokens, state if len(state) == 2 else state[0])
        return (logits, *new_state) if isinstance(new_state, tuple) else (logits, new_state)


class ClassifierGraph(nn.Module):
    """tokens ``(B, T)`` right-padded and lengths ``(B,)`` -> logits ``(B, classes)``."""

    def __init__(self, network: SequenceClassifier):
        super().__init__()
        self.network = network

    def forward(self, tokens, lengths):
        return self.network(tokens, lengths)


def _random_lengths(batch: int, time: int, generator: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(1, time + 1, (batch,), generator=generator)
    lengths[0] = time  # the padded width is the longest length, as in a real batch
    return lengths


def _sized(network: nn.Module) -> nn.Module:
    """The network whose embeddings give the graph's vocabulary sizes: an ensemble's first member
    (its members share the vocabularies)."""
    return network.members[0] if isinstance(network, Ensemble) else network


def language_model_graphs(network: RNNLanguageModel) -> Interface:
    stack = network.rnn
    vocab_size = network.vocab_size

    def make_inputs(batch, time, generator):
        tokens = torch.randint(0, vocab_size, (batch, time), generator=generator)
        if stack.state_size != stack.hidden_size:
            # A modern cell's packed state has parts no random draw resembles (a normaliser near 0 makes
            # any output): the state that reading a few tokens leaves, as the runtime carries.
            with torch.no_grad():
                prefix = torch.randint(0, vocab_size, (batch, 4), generator=generator)
                return tokens, network(prefix)[1]
        state_shape = (stack.num_layers, batch, stack.hidden_size)
        return (tokens, *(torch.randn(state_shape, generator=generator) for _ in state))

    state = names.state_names(stack.state_names)
    inputs, outputs = [names.TOKENS, *state], [names.LOGITS, *names.next_state(state)]
    axes = {names.TOKENS: {0: "batch", 1: "time"}, names.LOGITS: {0: "batch", 1: "time"}}
    axes |= {name: {1: "batch"} for name in inputs[1:] + outputs[1:]}
    graph = Graph("model.onnx", LanguageModelGraph(network), make_inputs, inputs, outputs, axes)
    shape = [stack.num_layers, "batch", stack.state_size]
    return Interface([graph], StateSpec(inputs=inputs[1:], outputs=outputs[1:], shape=shape))


def classifier_graphs(network: SequenceClassifier) -> Interface:
    vocab_size = _sized(network).embedding.num_embeddings

    def make_inputs(batch, time, generator):
        tokens = torch.randint(0, vocab_size, (batch, time), generator=generator)
        return tokens, _random_lengths(batch, time, generator)

    inputs, outputs = names.CLASSIFIER_INPUTS, names.CLASSIFIER_OUTPUTS
    axes = {names.TOKENS: {0: "batch", 1: "time"}, names.LENGTHS: {0: "batch"}, names.LOGITS: {0: "batch"}}
    return Interface([Graph("model.onnx", ClassifierGraph(network), make_inputs, inputs, outputs, axes)])


class TaggerGraph(nn.Module):
    """tokens ``(B, T)``, lengths and (with character features) chars ``(B, T, W)`` and their lengths
    ``(B, T)`` -> emissions ``(B, T, tags)`` and the decoded tag ids ``(B, T)`` (Viterbi with a CRF)."""

    def __init__(self, network: SequenceTagger):
        super().__init__()
        self.network = network

    def forward(self, tokens, lengths, chars=None, char_lengths=None):
        emissions = self.network(tokens, lengths, chars, char_lengths)
        return emissions, self.network.decode(emissions, valid_mask(lengths, tokens.size(1)))


def tagger_graphs(network: SequenceTagger) -> Interface:
    sized = _sized(network)
    vocab_size = sized.embedding.num_embeddings
    char_vocab_size = sized.chars.embedding.num_embeddings if sized.chars is not None else 0

    def make_inputs(batch, time, generator):
        tokens = torch.randint(0, vocab_size, (batch, time), generator=generator)
        lengths = _random_lengths(batch, time, generator)
        if not char_vocab_size:
            return tokens, lengths
        width = 1 + time % 6
        chars = torch.randint(0, char_vocab_size, (batch, time, width), generator=generator)
        char_lengths = torch.randint(1, width + 1, (batch, time), generator=generator)
        return tokens, lengths, chars, char_lengths * valid_mask(lengths, time)

    inputs, outputs = names.tagger_inputs(bool(char_vocab_size)), names.TAGGER_OUTPUTS
    axes = {names.TOKENS: {0: "batch", 1: "time"}, names.LENGTHS: {0: "batch"}}
    axes |= {names.CHARS: {0: "batch", 1: "time", 2: "width"}}
    axes |= {name: {0: "batch", 1: "time"} for name in (names.CHAR_LENGTHS, *names.TAGGER_OUTPUTS)}
    axes = {name: value for name, value in axes.items() if name in inputs + outputs}
    return Interface([Graph("model.onnx", TaggerGraph(network), make_inputs, inputs, outputs, axes)])


class EncoderGraph(nn.Module):
    """source ``(B, S)`` and lengths -> the memory the decoder reads and its initial state."""

    def __init__(self, network: Seq2Seq):
        super().__init__()
        self.network = network

    def forward(self, source, lengths):
        memory, state = self.network.encode(source, lengths)
        fields = [getattr(memory, field) for field in names.MEMORY[self.network.context]]
        feed = [] if state.feed is None else [state.feed]
        return (*fields, *_tensors(state.rnn), *feed)


class DecoderStepGraph(nn.Module):
    """previous tokens ``(B,)``, the decoder state and the memory -> logits ``(B, V)``, the new state
    and (with attention) the weights ``(B, S)``: the step that greedy and beam search repeat."""

    def __init__(self, network: Seq2Seq):
        super().__init__()
        self.network = network
        layers = network.decoder.layers  # the export copy's: its decoder runs only in this graph
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.RNNBase):
                layers[i] = SingleStep(layer)

    def forward(self, tokens, *inputs):
        network = self.network
        state_count = len(network.decoder.state_names)
        rnn = inputs[:state_count] if state_count > 1 else inputs[0]
        feed = inputs[state_count] if network.input_feeding else None
        memory_fields = names.MEMORY[network.context]
        fields = dict(zip(memory_fields, inputs[state_count + network.input_feeding :], strict=True))
        memory = Memory(**{field: fields.get(field) for field in Memory._fields})
        logits, state, weights = network.decode_step(tokens, DecoderState(rnn, feed), memory)
        feed = [] if state.feed is None else [state.feed]
        return (logits, *_tensors(state.rnn), *feed, *([] if weights is None else [weights]))


def _tensors(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def seq2seq_graphs(network: Seq2Seq | Seq2SeqEnsemble, prefix: str = "") -> Interface:
    """The encoder and decoder-step graphs (their files named with ``prefix``); an ensemble's members' each."""
    if isinstance(network, Seq2SeqEnsemble):
        return _seq2seq_ensemble_graphs(network)
    vocab, target_vocab = network.source_embedding.num_embeddings, network.target_embedding.num_embeddings
    memory_names = list(names.MEMORY[network.context].values())
    state_names = names.state_names(network.decoder.state_names, network.input_feeding)
    encoder = EncoderGraph(network)

    def encoder_inputs(batch, time, generator):
        return torch.randint(0, vocab, (batch, time), generator=generator), _random_lengths(batch, time, generator)

    def decoder_inputs(batch, time, generator):
        with torch.no_grad():
            encoded = encoder(*encoder_inputs(batch, time, generator))
        memory, state = encoded[: len(memory_names)], encoded[len(memory_names) :]
        return (torch.randint(0, target_vocab, (batch,), generator=generator), *state, *memory)

    encoder_outputs = memory_names + state_names
    decoder_inputs_names = [names.TOKENS, *state_names, *memory_names]
    decoder_outputs = names.decoder_outputs(state_names, attention=network.context == "attention")

    def axes(names: list[str]) -> dict[str, dict[int, str]]:
        return {name: SEQ2SEQ_AXES[name.removesuffix("_out")] for name in names}

    graphs = [
        Graph(
            f"{prefix}encoder.onnx",
            encoder,
            encoder_inputs,
            names.ENCODER_INPUTS,
            encoder_outputs,
            axes([*names.ENCODER_INPUTS, *encoder_outputs]),
        ),
        Graph(
            f"{prefix}decoder.onnx",
            DecoderStepGraph(network),
            decoder_inputs,
            decoder_inputs_names,
            decoder_outputs,
            axes(decoder_inputs_names + decoder_outputs),
        ),
    ]
    return Interface(graphs, StateSpec(inputs=state_names, outputs=names.next_state(state_names)), memory_names)


def _seq2seq_ensemble_graphs(ensemble: Seq2SeqEnsemble) -> Interface:
    """Every member's own graphs: members may differ in cell, attention and state, and the runtime
    averages their next-word probabilities at each step (``zoo.common.decoding.log_mean_probabilities``)."""
    graphs, members = [], []
    for i, member in enumerate(ensemble.members):
        interface = seq2seq_graphs(member, prefix=f"member{i}.")
        encoder, decoder = interface.graphs
        graphs += interface.graphs
        members.append(
            MemberSpec(encoder=encoder.file, decoder=decoder.file, state=interface.state, memory=interface.memory)
        )
    return Interface(graphs, members=members)


_SOURCE = {0: "batch", 1: "source_time"}
SEQ2SEQ_AXES = {
    names.SOURCE: _SOURCE,
    names.LENGTHS: {0: "batch"},
    **{name: _SOURCE for name in names.MEMORY["attention"].values()},
    **{name: {0: "batch"} for name in names.MEMORY["every_step"].values()},
    "h": {1: "batch"},
    "c": {1: "batch"},
    "feed": {0: "batch"},
    names.TOKENS: {0: "batch"},
    names.LOGITS: {0: "batch"},
    names.ATTENTION: _SOURCE,
}


class ForecasterGraph(nn.Module):
    """series ``(B, L, C)`` in the data's units -> forecast ``(B, H, C)``: the scaling is in the graph."""

    def __init__(self, network: Forecaster):
        super().__init__()
        self.network = network

    def forward(self, series):
        return self.network.forecast(series)


def forecaster_graphs(network: Forecaster) -> Interface:
    """``L`` and ``C`` are fixed by the network, the batch is free."""
    shape = (network.input_length, network.channels)

    def make_inputs(batch, time, generator):  # ``time`` is the network's own ``input_length``
        return (torch.randn((batch, *shape), generator=generator) * network.std + network.mean,)

    axes = {names.SERIES: {0: "batch"}, names.FORECAST: {0: "batch"}}
    graph = Graph("model.onnx", ForecasterGraph(network), make_inputs, [names.SERIES], [names.FORECAST], axes)
    return Interface([graph])
