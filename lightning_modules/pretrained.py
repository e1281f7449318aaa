"""Convert between Lightning checkpoints and the zoo's pretrained folders (``zoo.pretrained``)."""

import os
from pathlib import Path

import torch

from lightning_modules.classification import ClassificationTask
from lightning_modules.data_state import DataStateInCheckpoint
from lightning_modules.language_model import LanguageModelTask
from lightning_modules.tagging import TaggingTask
from lightning_modules.translation import TranslationTask
from zoo.hub import resolve
from zoo.pretrained import load_pretrained, read_config, save_pretrained

TASKS: dict[str, type[DataStateInCheckpoint]] = {
    cls.__name__: cls for cls in (LanguageModelTask, ClassificationTask, TaggingTask, TranslationTask)
}


def task_class_of_checkpoint(hyper_parameters: dict) -> type[DataStateInCheckpoint]:
    """Which task wrote a checkpoint, told by the hyperparameters only that task has."""
    if "source_vocab_size" in hyper_parameters:
        return TranslationTask
    if "char_vocab_size" in hyper_parameters:
        return TaggingTask
    if "labels" in hyper_parameters:
        return ClassificationTask
    if "vocab_size" in hyper_parameters:
        return LanguageModelTask
    raise ValueError(f"not an rnnzoo checkpoint: hyperparameters {sorted(hyper_parameters)} name no task")


def load_task_checkpoint(ckpt_path: str | os.PathLike) -> DataStateInCheckpoint:
    """Any rnnzoo task from its ``.ckpt`` (our own files: the pickle in them is trusted)."""
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt_path}")
    hyper_parameters = torch.load(ckpt_path, map_location="cpu", weights_only=False).get("hyper_parameters", {})
    task_class = task_class_of_checkpoint(hyper_parameters)
    return task_class.load_from_checkpoint(ckpt_path, map_location="cpu")


def publish(
    ckpt_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    metrics: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the task in ``ckpt_path`` as a pretrained folder (weights in ``dtype`` when given)."""
    task = load_task_checkpoint(ckpt_path)
    return save_pretrained(
        out_dir,
        task.net,
        arguments=task.network_arguments,
        task=type(task).__name__,
        task_arguments=dict(task.hparams),
        tokenizers=dict(task.tokenizer_jsons),
        metrics=metrics,
        dtype=dtype,
    )


def load_task(source: str | os.PathLike, expected: type[DataStateInCheckpoint] | None = None) -> DataStateInCheckpoint:
    """A task from a ``.ckpt`` or from a pretrained source (folder, zoo entry name, URL, ``hf://``),
    refused unless it is an ``expected`` task when one is given."""
    if str(source).endswith(".ckpt") or Path(source).is_file():
        task = load_task_checkpoint(source)
    else:
        task = task_from_pretrained(source)
    if expected is not None and not isinstance(task, expected):
        raise ValueError(f"{source} holds a {type(task).__name__}, not a {expected.__name__}")
    return task


def task_from_pretrained(directory: str | os.PathLike) -> DataStateInCheckpoint:
    """The Lightning task of a pretrained folder (or zoo entry name, URL, ``hf://``; see ``zoo.hub``),
    ready to predict, test or fine-tune."""
    directory = resolve(directory)
    config = read_config(Path(directory))
    task_class = TASKS.get(config["task"])
    if task_class is None:
        raise ValueError(f"{directory}: unknown task {config['task']!r} (known: {', '.join(TASKS)})")
    pretrained = load_pretrained(directory)
    task = task_class(**config["task_arguments"])
    task.net.load_state_dict(pretrained.network.state_dict())
    task.tokenizer_jsons = {name: tokenizer.to_str() for name, tokenizer in pretrained.tokenizers.items()}
    return task.eval()


def load_pretrained_weights(task: DataStateInCheckpoint, directory: str | os.PathLike) -> None:
    """Copy a pretrained folder's weights into ``task`` (built from a config) to fine-tune it."""
    pretrained = load_pretrained(directory)
    config = pretrained.config
    if config["task"] != type(task).__name__:
        raise ValueError(f"{directory} holds a {config['task']}, the config builds a {type(task).__name__}")
    task.check_trained_on_same_data(config["task_arguments"], str(directory))
    try:
        task.net.load_state_dict(pretrained.network.state_dict())
    except RuntimeError as err:
        raise ValueError(
            f"the weights of {directory} do not fit the model of the config (use the config it was trained "
            f"with, see its metrics.json): {err}"
        ) from err
