"""The pretrained folder format: ``config.json``, ``model.safetensors``, tokenizer JSON files, ``metrics.json``.

Like Hugging Face ``save_pretrained``: weights are safetensors (never a pickle, so loading a
downloaded model runs no code) and everything else is JSON. ``config.json`` names the zoo
architecture and its arguments (enough to rebuild the network here, without Lightning) and the
Lightning task with its hyperparameters (enough for ``lightning_modules.task_io`` to rebuild the
task for prediction or fine-tuning).
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from zoo.common import tasks
from zoo.common.formats import (
    CONFIG_FILE,
    MAX_JSON_BYTES,
    METRICS_FILE,
    WEIGHTS_FILE,
    PretrainedConfig,
    folder_file,
    listed_files,
    read_json,
    read_pretrained_config,
    read_written_config,
    write_json,
)
from zoo.common.text import read_tokenizer

INT8_SCALE, INT8_MIN_ELEMENTS = ".int8_row_scale", 1 << 20


@dataclass
class Pretrained:
    """A loaded pretrained folder: the network (eval mode, float32) and what it needs to predict."""

    network: nn.Module
    config: PretrainedConfig
    tokenizers: dict[str, Tokenizer] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def save_pretrained(
    directory: str | os.PathLike,
    network: nn.Module,
    *,
    arguments: dict,
    task_arguments: dict,
    tokenizers: dict[str, str],
    metrics: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``network`` as a pretrained folder; returns its path.

    ``arguments`` rebuild the network (``architecture(**arguments)``); ``task_arguments`` rebuild the
    LightningModule of its task (``zoo.common.tasks``, stored by name); ``tokenizers`` maps a
    name (``tokenizer``, ``source_tokenizer``...) to a ``tokenizers`` JSON string; ``dtype`` (e.g.
    ``torch.float16``) stores the floating-point weights in that type; ``torch.int8`` stores the
    large matrices (embeddings, vocabulary projections) as per-row int8 and the rest as float16.
    The folder appears whole or not at all: it is written next to its destination and renamed into place.
    """
    task = tasks.of_class(type(network))
    weights, aliases = _unique_tensors(network, torch.float16 if dtype == torch.int8 else dtype)
    int8_rows = _quantize_large_matrices(weights) if dtype == torch.int8 else []
    config = PretrainedConfig(
        architecture=type(network).__name__,
        arguments=arguments,
        task=task.name,
        task_arguments=task_arguments,
        tokenizers={name: f"{name}.json" for name in sorted(tokenizers)},
        weights_dtype=str(dtype or next(network.parameters()).dtype).removeprefix("torch."),
        tied_weights=aliases,
        int8_rows=int8_rows,
    )
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
    """Fill a folder that replaces ``directory`` only if the block succeeds (else nothing changes).

    ``directory`` must be new, empty, or a folder rnnzoo wrote earlier (see ``check_replaceable``):
    a user's folder is never deleted. An earlier folder is swapped out by two renames, so readers see
    the old folder or the new one, never a mix."""
    destination = Path(directory).absolute()
    check_replaceable(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
        for path in staging.iterdir():  # mkdtemp and some writers create owner-only files
            path.chmod(0o644)
        staging.chmod(0o755)
        check_replaceable(destination)  # the block may have run for minutes
        if destination.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
            destination.rename(previous / destination.name)
            staging.rename(destination)
            shutil.rmtree(previous)
        else:
            staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_replaceable(destination: Path) -> None:
    """Raise unless ``destination`` is absent, an empty folder, or a pretrained or exported folder
    holding only the files its ``config.json`` names (rnnzoo's own output, safe to replace)."""
    if destination.is_symlink() or (destination.exists() and not destination.is_dir()):
        raise FileExistsError(f"{destination} exists and is not a folder: choose another output folder")
    if not destination.exists():
        return
    if Path.cwd().resolve().is_relative_to(destination.resolve()):
        raise FileExistsError(f"{destination} holds the working directory: choose another output folder")
    if not any(destination.iterdir()):
        return
    config = read_written_config(destination)
    if config is None or any(path.name not in config.files() or not path.is_file() for path in destination.iterdir()):
        raise FileExistsError(
            f"{destination} is not empty and is not a folder written by rnnzoo: refusing to replace it "
            "(choose a new or empty output folder)"
        )


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
    """Rebuild the network of a pretrained folder (float32, eval mode) with its tokenizers and metrics.

    Only the files ``config.json`` names are read, each a plain name inside the folder and, where the
    folder holds ``entry.json`` (every published or downloaded folder does), one that it lists."""
    folder = Path(directory)
    listed = listed_files(folder)
    config = read_pretrained_config(folder, listed)
    task = tasks.get(config.task)
    architecture = task.load("architecture")
    if config.architecture == task.load("ensemble").__name__:
        architecture = task.load("ensemble")
    elif config.architecture != architecture.__name__:
        raise ValueError(f"{folder / CONFIG_FILE}: a {config.task} network is a {architecture.__name__}")
    architecture_call = f"{config.architecture}({config.arguments})"
    weights_path = folder_file(folder, WEIGHTS_FILE, listed)
    try:
        with safe_open(weights_path, "pt") as stored:  # the header only
            shapes = {name: stored.get_slice(name).get_shape() for name in stored.keys()}  # noqa: SIM118
    except (FileNotFoundError, SafetensorError) as err:
        raise ValueError(
            f"{weights_path}: cannot read the weights ({err}); download or publish the folder again"
        ) from None
    with torch.device("meta"):  # the shapes config.json implies, checked before any memory is taken for them
        expected = architecture(**config.arguments).state_dict()
    wrong = [
        f"{name} {shapes.get(config.tied_weights.get(name, name))} (it needs {list(tensor.shape)})"
        for name, tensor in expected.items()
        if shapes.get(config.tied_weights.get(name, name)) != list(tensor.shape)
    ]
    if wrong:
        raise ValueError(f"{folder}: the weights do not fit {architecture_call}: {'; '.join(wrong[:3])}")
    network = architecture(**config.arguments)
    weights = load_file(weights_path)
    for name in config.int8_rows:
        weights[name] = weights[name].float() * weights.pop(name + INT8_SCALE).float().unsqueeze(1)
    for alias, stored in config.tied_weights.items():
        weights[alias] = weights[stored]
    reference = network.state_dict()
    weights = {k: v.to(reference[k].dtype) if k in reference else v for k, v in weights.items()}
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"{folder}: the weights do not fit {architecture_call}: {err}") from err
    tokenizers = load_tokenizers(folder, config, listed)
    metrics_path = folder_file(folder, METRICS_FILE, max_bytes=MAX_JSON_BYTES)
    has_metrics = metrics_path.is_file() and (listed is None or METRICS_FILE in listed)
    metrics = read_json(metrics_path) if has_metrics else {}
    return Pretrained(network.eval(), config, tokenizers, metrics)


def load_tokenizers(
    folder: Path, config: PretrainedConfig | None = None, listed: set[str] | None = None
) -> dict[str, Tokenizer]:
    """The tokenizers of a pretrained folder by name (``tokenizer``, ``source_tokenizer``...);
    ``listed``: its ``listed_files`` when the caller has read them."""
    listed = listed_files(folder) if listed is None else listed
    config = read_pretrained_config(folder, listed) if config is None else config
    return {name: read_tokenizer(Path(folder), file_name, listed) for name, file_name in config.tokenizers.items()}
