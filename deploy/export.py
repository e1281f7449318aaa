"""``rnnzoo export``: a pretrained folder or zoo entry -> a self-contained ONNX folder, verified.

A ``.ckpt`` is made a pretrained folder first (``rnnzoo export`` does it with
``lightning_modules.task_io.publish``): this module reads pretrained folders only, so ``deploy``
never imports the training code.

The folder holds the ONNX graph(s), the tokenizer JSON file(s) and ``config.json`` (task, labels,
special token ids, graph inputs/outputs, state sizes, rnnzoo version, the source's sha256 and the
verification result); a translator ensemble has each member's encoder and decoder-step graphs
(``member0.encoder.onnx``, ...), listed under ``members``. Every graph is checked with
``onnx.checker`` and run by onnxruntime against PyTorch on several batch sizes and lengths; the
export fails, writing nothing, when the outputs differ by more than the tolerance.

We use the TorchScript-based exporter (``dynamo=False``) on purpose: it maps ``nn.LSTM``/``GRU``/
``RNN`` (packed sequences included) to ONNX's fused LSTM/GRU/RNN ops with ``sequence_lens``, while
the dynamo exporter in this torch decomposes recurrences and needs extra packages. ``mingru``,
``minlstm`` and the modern cells (``zoo.cells.modern``) export their recurrence as an ONNX Loop over time.
"""

import os
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from deploy.graphs import Graph
from deploy.parity import task_parity
from zoo.cells.fused import prepare_for_onnx_export
from zoo.cells.loop import LOOP_CELLS
from zoo.cells.recurrent import RecurrentStack
from zoo.common import tasks
from zoo.common.formats import WEIGHTS_FILE, DecodingSpec, ExportConfig, GraphSpec, write_json
from zoo.networks.ensemble import LanguageModelEnsemble
from zoo.storage.hub import resolve, sha256_of
from zoo.storage.pretrained import Pretrained, load_pretrained, staged_folder

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
CHECK_SHAPES = ((1, 1), (2, 7), (3, 19), (8, 48))  # (batch, time) pairs every graph is verified on


class ExportError(RuntimeError):
    """The model cannot be exported, or its ONNX graph disagrees with PyTorch."""


SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def load_source(source: str | os.PathLike) -> tuple[Pretrained, str]:
    """A pretrained folder, zoo entry, URL or ``hf://`` repository (``zoo.storage.hub.resolve``) and its
    weights' sha256."""
    if Path(source).is_file():
        raise ValueError(f"{source} is a file: export reads pretrained folders (`rnnzoo export` converts a .ckpt)")
    folder = resolve(source)
    return load_pretrained(folder), sha256_of(folder / WEIGHTS_FILE)


def export(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    quantize: str | None = None,
    parity_data=None,
    parity_examples: int = 1000,
    source_sha256: str | None = None,
) -> ExportConfig:
    """Export ``source`` (a pretrained folder or zoo entry) to ``out_dir``; returns the written config.

    ``quantize="int8"`` quantizes every graph after its float32 version has passed verification;
    the quantized graph's difference from PyTorch is recorded, not enforced. ``parity_data`` (a
    ``datasets.Dataset`` of held-out rows in the task's Hub schema) adds task-level parity on its
    first ``parity_examples`` rows (see ``deploy.parity``). ``source_sha256`` records where the
    folder came from (default: the sha256 of its weights; the CLI gives a checkpoint's).
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    pretrained, weights_sha256 = load_source(source)
    network = pretrained.network.eval().float()
    task = tasks.get(pretrained.config.task)
    if isinstance(network, LanguageModelEnsemble):
        raise ExportError(
            "a language-model ensemble is not exported (an export carries one recurrent state shape): "
            "export its members one by one"
        )
    stacks = [m for m in network.modules() if isinstance(m, RecurrentStack)]
    if any(stack.cell in LOOP_CELLS for stack in stacks):
        raise ExportError(
            f"the loop cells ({', '.join(LOOP_CELLS)}) do not export to ONNX: every other cell does "
            "(the fused ones as RNN ops, the rest as a Loop)"
        )
    interface = task.load("graphs")(prepare_for_onnx_export(network))
    graphs = interface.graphs
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
        task_arguments = pretrained.config.task_arguments
        config = ExportConfig(
            task=task.name,
            architecture=pretrained.config.architecture,
            labels=task_arguments.get("labels"),
            language_pair=task_arguments.get("language_pair"),
            columns=task_arguments.get("columns"),
            tokenizers=tokenizer_files,
            special_tokens=_special_tokens(pretrained),
            graphs={graph.file: _describe(staging / graph.file) for graph in graphs},
            state=interface.state,
            memory=interface.memory,
            members=interface.members,  # a translator ensemble's
            decoding=DecodingSpec.of(task_arguments),
            opset=opset,
            quantization=quantize,
            rnnzoo_version=version("rnnzoo"),
            source_sha256=source_sha256 or weights_sha256,
            verification=verification,
        )
        write_json(staging / "config.json", config)
        if parity_data is not None:
            config.parity = task_parity(staging, network, parity_data, parity_examples)
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
    those only the matrix products outside the recurrence and the embeddings are quantized (a
    translator's decoder step writes its recurrence as matrix products: ``zoo.cells.fused.SingleStep``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_suffix(".int8.onnx")
    quantize_dynamic(path, quantized, weight_type=QuantType.QInt8)
    quantized.replace(path)


def verify(graph: Graph, path: Path, tolerance: float | None = None) -> dict:
    """Run onnxruntime and PyTorch on the same random inputs; raise if an output differs by more
    than ``tolerance`` (``None``: only measure), absolute for values up to 1 and relative above, as
    ``numpy.allclose`` with ``atol = rtol``: a modern cell's packed state holds sums of hundreds of
    gated steps (an sLSTM's normaliser reaches about 1 / (1 - f), a few hundred), whose float32
    rounding is a few 1e-4 in absolute terms and 1e-6 of their size."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    worst, worst_scaled = 0.0, 0.0
    for batch, time in CHECK_SHAPES:
        inputs = graph.make_inputs(batch, time, generator)
        with torch.no_grad():
            expected = graph.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feed = {name: tensor.numpy() for name, tensor in zip(graph.input_names, inputs, strict=True)}
        actual = session.run(graph.output_names, feed)
        for name, a, e in zip(graph.output_names, actual, expected, strict=True):
            e = e.double().numpy()
            gap = np.abs(a.astype(np.float64) - e)
            difference = float(gap.max()) if a.size else 0.0
            scaled = float((gap / np.maximum(np.abs(e), 1.0)).max()) if a.size else 0.0
            if tolerance is not None and not scaled <= tolerance:
                raise ExportError(
                    f"{graph.file}: onnxruntime and PyTorch differ by {difference:.3g} on {name} "
                    f"(batch {batch}, time {time}); tolerance {tolerance:g} (relative to values above 1)"
                )
            worst, worst_scaled = max(worst, difference), max(worst_scaled, scaled)
    shapes = [list(s) for s in CHECK_SHAPES]
    return {"max_abs_diff": worst, "max_scaled_diff": worst_scaled, "tolerance": tolerance, "shapes": shapes}


def _describe(path: Path) -> GraphSpec:
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

    return GraphSpec(inputs=[spec(v) for v in graph.input], outputs=[spec(v) for v in graph.output])


def _special_tokens(pretrained: Pretrained) -> dict[str, dict[str, int]]:
    return {
        name: {
            token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is not None
        }
        for name, tokenizer in pretrained.tokenizers.items()
    }
