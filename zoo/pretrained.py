"""The pretrained folder format: ``config.json``, ``model.safetensors``, tokenizer JSON files, ``metrics.json``.

Like Hugging Face ``save_pretrained``: weights are safetensors (never a pickle, so loading a
downloaded model runs no code) and everything else is JSON. ``config.json`` names the zoo
architecture and its arguments (enough to rebuild the network here, without Lightning) and the
Lightning task with its hyperparameters (enough for ``lightning_modules.pretrained`` to rebuild the
task for prediction or fine-tuning).
"""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from zoo.classifier import SequenceClassifier
from zoo.language_model import RNNLanguageModel
from zoo.seq2seq import Seq2Seq
from zoo.tagger import SequenceTagger

FORMAT_VERSION = 1
INT8_SCALE, INT8_MIN_ELEMENTS = ".int8_row_scale", 1 << 20
CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE = "config.json", "model.safetensors", "metrics.json"
ARCHITECTURES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (RNNLanguageModel, SequenceClassifier, SequenceTagger, Seq2Seq)
}


@dataclass
class Pretrained:
    """A loaded pretrained folder: the network (eval mode, float32) and what it needs to predict."""

    network: nn.Module
    config: dict
    tokenizers: dict[str, Tokenizer] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def save_pretrained(
    directory: str | os.PathLike,
    network: nn.Module,
    *,
    arguments: dict,
    task: str,
    task_arguments: dict,
    tokenizers: dict[str, str],
    metrics: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``network`` as a pretrained folder; returns its path.

    ``arguments`` rebuild the network (``ARCHITECTURES[name](**arguments)``); ``tokenizers`` maps a
    name (``tokenizer``, ``source_tokenizer``...) to a ``tokenizers`` JSON string; ``dtype`` (e.g.
    ``torch.float16``) stores the floating-point weights in that type; ``torch.int8`` stores the
    large matrices (embeddings, vocabulary projections) as per-row int8 and the rest as float16.
    The folder appears whole or not at all: it is written next to its destination and renamed into place.
    """
    architecture = type(network).__name__
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{architecture} is not a zoo architecture ({', '.join(ARCHITECTURES)})")
    weights, aliases = _unique_tensors(network, torch.float16 if dtype == torch.int8 else dtype)
    int8_rows = _quantize_large_matrices(weights) if dtype == torch.int8 else []
    config = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "arguments": arguments,
        "task": task,
        "task_arguments": task_arguments,
        "tokenizers": {name: f"{name}.json" for name in sorted(tokenizers)},
        "weights_dtype": str(dtype or next(network.parameters()).dtype).removeprefix("torch."),
        "tied_weights": aliases,
        "int8_rows": int8_rows,
    }
    with staged_folder(directory) as staging:
        save_file(weights, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        write_json(staging / CONFIG_FILE, config)
        for name, tokenizer_json in tokenizers.items():
            (staging / f"{name}.json").write_text(tokenizer_json)
        if metrics is not None:
            write_json(staging / METRICS_FILE, metrics)
    return Path(directory)


@contextmanager
def staged_folder(directory: str | os.PathLike) -> Iterator[Path]:
    """Fill a folder that replaces ``directory`` only if the block succeeds (else nothing changes)."""
    destination = Path(directory)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
        for path in staging.iterdir():  # mkdtemp and some writers create owner-only files
            path.chmod(0o644)
        staging.chmod(0o755)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _quantize_large_matrices(weights: dict[str, torch.Tensor]) -> list[str]:
    """Replace every matrix of at least ``INT8_MIN_ELEMENTS`` values in ``weights`` by symmetric
    per-row int8 values and a float16 scale per row (``name + INT8_SCALE``); returns their names.
    Vocabulary-sized matrices hold most of a model's bytes, and a scale per row keeps each word's
    values within half a step (0.4% of the row's largest value) of the original."""
    names = [n for n, t in weights.items() if t.dim() == 2 and t.is_floating_point() and t.numel() >= INT8_MIN_ELEMENTS]
    for name in names:
        matrix = weights[name].float()
        scale = (matrix.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float16).tiny)
        weights[name] = torch.round(matrix / scale.unsqueeze(1)).clamp(-127, 127).to(torch.int8)
        weights[name + INT8_SCALE] = scale.half()
    return names


def _unique_tensors(network: nn.Module, dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each tied tensor stored once, and the tied names mapped to the stored one.

    safetensors refuses tensors that share memory (e.g. a tied embedding and output projection).
    """
    weights, aliases, first_name_of = {}, {}, {}
    for name, tensor in network.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.stride())
        if key in first_name_of:
            aliases[name] = first_name_of[key]
            continue
        first_name_of[key] = name
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        weights[name] = tensor.contiguous().cpu()
    return weights, aliases


def load_pretrained(directory: str | os.PathLike) -> Pretrained:
    """Rebuild the network of a pretrained folder (float32, eval mode) with its tokenizers and metrics."""
    folder = Path(directory)
    config = read_config(folder)
    architecture = ARCHITECTURES.get(config.get("architecture"))
    if architecture is None:
        raise ValueError(f"{folder / CONFIG_FILE}: unknown architecture {config.get('architecture')!r}")
    network = architecture(**config["arguments"])
    try:
        weights = load_file(folder / WEIGHTS_FILE)
    except (FileNotFoundError, SafetensorError) as err:
        raise ValueError(f"{folder / WEIGHTS_FILE}: cannot read the weights ({err})") from err
    for name in config.get("int8_rows", []):
        weights[name] = weights[name].float() * weights.pop(name + INT8_SCALE).float().unsqueeze(1)
    for alias, stored in config.get("tied_weights", {}).items():
        weights[alias] = weights[stored]
    reference = network.state_dict()
    weights = {k: v.to(reference[k].dtype) if k in reference else v for k, v in weights.items()}
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        architecture_call = f"{config['architecture']}({config['arguments']})"
        raise ValueError(f"{folder}: the weights do not fit {architecture_call}: {err}") from err
    tokenizers = load_tokenizers(folder, config)
    metrics_path = folder / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return Pretrained(network.eval(), config, tokenizers, metrics)


def load_tokenizers(folder: Path, config: dict | None = None) -> dict[str, Tokenizer]:
    """The tokenizers of a pretrained folder by name (``tokenizer``, ``source_tokenizer``...)."""
    config = read_config(folder) if config is None else config
    return {
        name: Tokenizer.from_file(str(Path(folder) / file_name))
        for name, file_name in config.get("tokenizers", {}).items()
    }


def read_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a pretrained folder: it has no {CONFIG_FILE}")
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config.get('format_version')!r}, this rnnzoo reads {FORMAT_VERSION}")
    return config
