"""``rnnzoo export``: a checkpoint or pretrained folder -> a self-contained ONNX folder, verified.

The folder holds the ONNX graph(s), the tokenizer JSON file(s) and ``config.json`` (task, labels,
special token ids, graph inputs/outputs, state sizes, rnnzoo version, the source's sha256 and the
verification result). Every graph is checked with ``onnx.checker`` and run by onnxruntime against
PyTorch on several batch sizes and lengths; the export fails, writing nothing, when the outputs
differ by more than the tolerance.

We use the TorchScript-based exporter (``dynamo=False``) on purpose: it maps ``nn.LSTM``/``GRU``/
``RNN`` (packed sequences included) to ONNX's fused LSTM/GRU/RNN ops with ``sequence_lens``, while
the dynamo exporter in this torch decomposes recurrences and needs extra packages.
"""

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from deploy.parity import task_parity
from zoo.classifier import SequenceClassifier
from zoo.fused import prepare_for_onnx_export
from zoo.language_model import RNNLanguageModel
from zoo.pooling import valid_mask
from zoo.pretrained import Pretrained, load_pretrained, staged_folder, write_json
from zoo.recurrent import FUSED_CELLS, RecurrentStack
from zoo.seq2seq import DecoderState, Memory, Seq2Seq
from zoo.tagger import SequenceTagger

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
CHECK_SHAPES = ((1, 1), (2, 7), (3, 19), (8, 48))  # (batch, time) pairs every graph is verified on


class ExportError(RuntimeError):
    """The model cannot be exported, or its ONNX graph disagrees with PyTorch."""


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


def _state_names(stack: RecurrentStack, suffix: str = "") -> list[str]:
    return [f"h{suffix}", f"c{suffix}"] if stack.cell == "lstm" else [f"h{suffix}"]


def language_model_graphs(network: RNNLanguageModel) -> list[Graph]:
    stack = network.rnn
    vocab_size = network.vocab_size

    def make_inputs(batch, time, generator):
        tokens = torch.randint(0, vocab_size, (batch, time), generator=generator)
        state_shape = (stack.num_layers, batch, stack.hidden_size)
        return (tokens, *(torch.randn(state_shape, generator=generator) for _ in _state_names(stack)))

    inputs, outputs = ["tokens", *_state_names(stack)], ["logits", *_state_names(stack, "_out")]
    axes = {"tokens": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
    axes |= {name: {1: "batch"} for name in inputs[1:] + outputs[1:]}
    return [Graph("model.onnx", LanguageModelGraph(network), make_inputs, inputs, outputs, axes)]


def classifier_graphs(network: SequenceClassifier) -> list[Graph]:
    vocab_size = network.embedding.num_embeddings

    def make_inputs(batch, time, generator):
        tokens = torch.randint(0, vocab_size, (batch, time), generator=generator)
        return tokens, _random_lengths(batch, time, generator)

    axes = {"tokens": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "logits": {0: "batch"}}
    return [Graph("model.onnx", ClassifierGraph(network), make_inputs, ["tokens", "lengths"], ["logits"], axes)]


class TaggerGraph(nn.Module):
    """tokens ``(B, T)``, lengths and (with character features) chars ``(B, T, W)`` and their lengths
    ``(B, T)`` -> emissions ``(B, T, tags)`` and the decoded tag ids ``(B, T)`` (Viterbi with a CRF)."""

    def __init__(self, network: SequenceTagger):
        super().__init__()
        self.network = network

    def forward(self, tokens, lengths, chars=None, char_lengths=None):
        emissions = self.network(tokens, lengths, chars, char_lengths)
        return emissions, self.network.decode(emissions, valid_mask(lengths, tokens.size(1)))


def tagger_graphs(network: SequenceTagger) -> list[Graph]:
    vocab_size = network.embedding.num_embeddings
    char_vocab_size = network.chars.embedding.num_embeddings if network.chars is not None else 0

    def make_inputs(batch, time, generator):
        tokens = torch.randint(0, vocab_size, (batch, time), generator=generator)
        lengths = _random_lengths(batch, time, generator)
        if not char_vocab_size:
            return tokens, lengths
        width = 1 + time % 6
        chars = torch.randint(0, char_vocab_size, (batch, time, width), generator=generator)
        char_lengths = torch.randint(1, width + 1, (batch, time), generator=generator)
        return tokens, lengths, chars, char_lengths * valid_mask(lengths, time)

    inputs = ["tokens", "lengths"] + (["chars", "char_lengths"] if char_vocab_size else [])
    axes = {"tokens": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "chars": {0: "batch", 1: "time", 2: "width"}}
    axes |= {name: {0: "batch", 1: "time"} for name in ("char_lengths", "emissions", "tags")}
    axes = {name: value for name, value in axes.items() if name in inputs + ["emissions", "tags"]}
    return [Graph("model.onnx", TaggerGraph(network), make_inputs, inputs, ["emissions", "tags"], axes)]


# What the decoder step reads from the encoded source, by how the decoder sees it.
MEMORY_FIELDS = {"initial": [], "every_step": ["summary"], "attention": ["outputs", "mask", "keys"]}
MEMORY_NAMES = {"outputs": "memory", "mask": "memory_mask", "summary": "summary", "keys": "keys"}


class EncoderGraph(nn.Module):
    """source ``(B, S)`` and lengths -> the memory the decoder reads and its initial state."""

    def __init__(self, network: Seq2Seq):
        super().__init__()
        self.network = network

    def forward(self, source, lengths):
        memory, state = self.network.encode(source, lengths)
        fields = [getattr(memory, field) for field in MEMORY_FIELDS[self.network.context]]
        feed = [] if state.feed is None else [state.feed]
        return (*fields, *_tensors(state.rnn), *feed)


class DecoderStepGraph(nn.Module):
    """previous tokens ``(B,)``, the decoder state and the memory -> logits ``(B, V)``, the new state
    and (with attention) the weights ``(B, S)``: the step that greedy and beam search repeat."""

    def __init__(self, network: Seq2Seq):
        super().__init__()
        self.network = network

    def forward(self, tokens, *inputs):
        network = self.network
        state_count = 2 if network.cell == "lstm" else 1
        rnn = inputs[:state_count] if state_count == 2 else inputs[0]
        feed = inputs[state_count] if network.input_feeding else None
        fields = dict(zip(MEMORY_FIELDS[network.context], inputs[state_count + network.input_feeding :], strict=True))
        memory = Memory(**{field: fields.get(field) for field in Memory._fields})
        logits, state, weights = network.decode_step(tokens, DecoderState(rnn, feed), memory)
        feed = [] if state.feed is None else [state.feed]
        return (logits, *_tensors(state.rnn), *feed, *([] if weights is None else [weights]))


def _tensors(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def seq2seq_graphs(network: Seq2Seq) -> list[Graph]:
    vocab, target_vocab = network.source_embedding.num_embeddings, network.target_embedding.num_embeddings
    memory_names = [MEMORY_NAMES[field] for field in MEMORY_FIELDS[network.context]]
    state_names = ["h", "c"] if network.cell == "lstm" else ["h"]
    state_names += ["feed"] if network.input_feeding else []
    encoder = EncoderGraph(network)

    def encoder_inputs(batch, time, generator):
        return torch.randint(0, vocab, (batch, time), generator=generator), _random_lengths(batch, time, generator)

    def decoder_inputs(batch, time, generator):
        with torch.no_grad():
            encoded = encoder(*encoder_inputs(batch, time, generator))
        memory, state = encoded[: len(memory_names)], encoded[len(memory_names) :]
        return (torch.randint(0, target_vocab, (batch,), generator=generator), *state, *memory)

    encoder_outputs = memory_names + state_names
    decoder_inputs_names = ["tokens", *state_names, *memory_names]
    decoder_outputs = ["logits", *(f"{name}_out" for name in state_names)]
    decoder_outputs += ["attention"] if network.context == "attention" else []

    def axes(names: list[str]) -> dict[str, dict[int, str]]:
        return {name: SEQ2SEQ_AXES[name.removesuffix("_out")] for name in names}

    return [
        Graph(
            "encoder.onnx",
            encoder,
            encoder_inputs,
            ["source", "lengths"],
            encoder_outputs,
            axes(["source", "lengths", *encoder_outputs]),
        ),
        Graph(
            "decoder.onnx",
            DecoderStepGraph(network),
            decoder_inputs,
            decoder_inputs_names,
            decoder_outputs,
            axes(decoder_inputs_names + decoder_outputs),
        ),
    ]


_SOURCE = {0: "batch", 1: "source_time"}
SEQ2SEQ_AXES = {
    "source": _SOURCE,
    "lengths": {0: "batch"},
    "memory": _SOURCE,
    "memory_mask": _SOURCE,
    "keys": _SOURCE,
    "summary": {0: "batch"},
    "h": {1: "batch"},
    "c": {1: "batch"},
    "feed": {0: "batch"},
    "tokens": {0: "batch"},
    "logits": {0: "batch"},
    "attention": _SOURCE,
}


# The runtime's name for each architecture's task, and how to cut it into graphs.
TASKS: dict[type[nn.Module], tuple[str, Callable[[nn.Module], list[Graph]]]] = {
    RNNLanguageModel: ("language_model", language_model_graphs),
    SequenceClassifier: ("classification", classifier_graphs),
    Seq2Seq: ("translation", seq2seq_graphs),
    SequenceTagger: ("tagging", tagger_graphs),
}
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
DECODING_SETTINGS = ("beam_size", "length_penalty", "max_decode_length")


def load_source(source: str | os.PathLike) -> tuple[Pretrained, str]:
    """A pretrained folder, or a ``.ckpt`` converted to one, and the source's sha256."""
    path = Path(source)
    if path.is_dir():
        return load_pretrained(path), sha256_of(path / "model.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint or pretrained folder at {path}")
    from lightning_modules.pretrained import publish  # Lightning is only needed for .ckpt sources

    with tempfile.TemporaryDirectory() as folder:
        return load_pretrained(publish(path, Path(folder) / "model")), sha256_of(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    quantize: str | None = None,
    parity_data=None,
    parity_examples: int = 1000,
) -> dict:
    """Export ``source`` (``.ckpt`` or pretrained folder) to ``out_dir``; returns the written config.

    ``quantize="int8"`` quantizes every graph after its float32 version has passed verification;
    the quantized graph's difference from PyTorch is recorded, not enforced. ``parity_data`` (a
    ``datasets.Dataset`` of held-out rows in the task's Hub schema) adds task-level parity on its
    first ``parity_examples`` rows (see ``deploy.parity``).
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    pretrained, source_sha256 = load_source(source)
    network = pretrained.network.eval().float()
    if type(network) not in TASKS:
        raise ExportError(f"exporting {type(network).__name__} is not supported yet")
    stacks = [m for m in network.modules() if isinstance(m, RecurrentStack)]
    if any(stack.cell not in FUSED_CELLS for stack in stacks):
        raise ExportError(f"only the fused cells ({', '.join(FUSED_CELLS)}) export to ONNX RNN ops")
    task, make_graphs = TASKS[type(network)]
    graphs = make_graphs(prepare_for_onnx_export(network))
    with staged_folder(out_dir) as staging:
        verification = {}
        for graph in graphs:
            path = staging / graph.file
            _export_graph(graph, path, opset)
            verification[graph.file] = verify(graph, path, tolerance)
            if quantize == "int8":
                quantize_int8(path)
                verification[graph.file]["int8_max_abs_diff"] = verify(graph, path)["max_abs_diff"]
        tokenizer_files = {}
        for name, tokenizer in pretrained.tokenizers.items():
            tokenizer.save(str(staging / f"{name}.json"))
            tokenizer_files[name] = f"{name}.json"
        config = {
            "format_version": 1,
            "task": task,
            "architecture": pretrained.config["architecture"],
            "labels": pretrained.config["task_arguments"].get("labels"),
            "language_pair": pretrained.config["task_arguments"].get("language_pair"),
            "tokenizers": tokenizer_files,
            "special_tokens": _special_tokens(pretrained),
            "graphs": {graph.file: _describe(staging / graph.file) for graph in graphs},
            "state": {name: _state_sizes(m) for name, m in network.named_modules() if isinstance(m, RecurrentStack)},
            "decoding": {k: v for k, v in pretrained.config["task_arguments"].items() if k in DECODING_SETTINGS},
            "opset": opset,
            "quantization": quantize,
            "rnnzoo_version": version("rnnzoo"),
            "source_sha256": source_sha256,
            "verification": verification,
        }
        write_json(staging / "config.json", config)
        if parity_data is not None:
            config["parity"] = task_parity(staging, network, parity_data, parity_examples)
            write_json(staging / "config.json", config)
    return config


def _export_graph(graph: Graph, path: Path, opset: int) -> None:
    example = graph.make_inputs(2, 5, torch.Generator().manual_seed(0))  # batch >= 2: no batch-1 specialisation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on batch_first RNNs and tracing
        torch.onnx.export(
            graph.module,
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=graph.input_names,
            output_names=graph.output_names,
            dynamic_axes=graph.dynamic_axes,
        )
    onnx.checker.check_model(str(path), full_check=True)


def quantize_int8(path: Path) -> None:
    """onnxruntime dynamic int8 quantization, in place: int8 weights, activations quantized per call.

    LSTM layers become ``DynamicQuantizeLSTM``; ONNX Runtime has no integer GRU or RNN op, so for
    those only the matrix products outside the recurrence and the embeddings are quantized.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_suffix(".int8.onnx")
    quantize_dynamic(path, quantized, weight_type=QuantType.QInt8)
    quantized.replace(path)


def verify(graph: Graph, path: Path, tolerance: float | None = None) -> dict:
    """Run onnxruntime and PyTorch on the same random inputs; raise if an output differs by more
    than ``tolerance`` (``None``: only measure)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch, time in CHECK_SHAPES:
        inputs = graph.make_inputs(batch, time, generator)
        with torch.no_grad():
            expected = graph.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feed = {name: tensor.numpy() for name, tensor in zip(graph.input_names, inputs, strict=True)}
        actual = session.run(graph.output_names, feed)
        for name, a, e in zip(graph.output_names, actual, expected, strict=True):
            difference = float(np.abs(a.astype(np.float64) - e.double().numpy()).max()) if a.size else 0.0
            if tolerance is not None and not difference <= tolerance:
                raise ExportError(
                    f"{graph.file}: onnxruntime and PyTorch differ by {difference:.3g} on {name} "
                    f"(batch {batch}, time {time}); tolerance {tolerance:g}"
                )
            worst = max(worst, difference)
    return {"max_abs_diff": worst, "tolerance": tolerance, "shapes": [list(s) for s in CHECK_SHAPES]}


def _describe(path: Path) -> dict:
    """Each input and output of a written graph: element type and shape (axis names where dynamic)."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(value):
        tensor = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        return {
            "name": value.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            "shape": shape,
        }

    return {"inputs": [spec(v) for v in graph.input], "outputs": [spec(v) for v in graph.output]}


def _special_tokens(pretrained: Pretrained) -> dict[str, dict[str, int]]:
    return {
        name: {
            token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is not None
        }
        for name, tokenizer in pretrained.tokenizers.items()
    }


def _state_sizes(stack: RecurrentStack) -> dict:
    return {
        "cell": stack.cell,
        "num_layers": stack.num_layers,
        "num_directions": stack.num_directions,
        "hidden_size": stack.hidden_size,
    }
