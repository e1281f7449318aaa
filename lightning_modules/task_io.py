"""Convert between Lightning checkpoints and the zoo's pretrained folders (``zoo.storage.pretrained``)."""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from lightning_modules.task_module import TaskModule
from zoo.common import tasks
from zoo.common.text import vocabulary_difference
from zoo.networks.ensemble import Ensemble
from zoo.storage.checkpoint import read_checkpoint
from zoo.storage.hub import resolve, sha256_of
from zoo.storage.pretrained import load_pretrained, save_pretrained


def task_of_checkpoint(checkpoint: dict, ckpt_path) -> tasks.Task:
    """The task a checkpoint stores (``"task"``); checkpoints written before that was stored name their
    LightningModule in the hyperparameters LightningCLI saves (``_class_path``)."""
    name = (
        checkpoint.get("task") or str(checkpoint.get("hyper_parameters", {}).get("_class_path", "")).rpartition(".")[2]
    )
    if not name:
        raise ValueError(f"{ckpt_path}: not an rnnzoo checkpoint (it names no task)")
    return tasks.get(name, str(ckpt_path))


def load_task_checkpoint(ckpt_path: str | os.PathLike) -> TaskModule:
    """Any rnnzoo task from its ``.ckpt`` (see ``read_checkpoint``)."""
    task_class = task_of_checkpoint(read_checkpoint(ckpt_path), ckpt_path).load("lightning_module")
    return task_class.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)


def publish(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    metrics: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the task in ``source`` (a ``.ckpt`` or a pretrained folder or entry, e.g. to store it
    in another dtype) as a pretrained folder (weights in ``dtype`` when given)."""
    return save_task(load_task(source), out_dir, metrics, dtype)


@contextmanager
def as_pretrained_folder(source: str | os.PathLike) -> Iterator[tuple[str | os.PathLike, str | None]]:
    """``source`` where a pretrained folder is read (export, benchmarks): a ``.ckpt`` published into a
    temporary folder for the block, with the checkpoint's sha256; any other source as it is, with ``None``."""
    if not Path(source).is_file():
        yield source, None
        return
    with tempfile.TemporaryDirectory() as folder:
        yield publish(source, Path(folder) / "model"), sha256_of(Path(source))


def save_task(
    task: TaskModule,
    out_dir: str | os.PathLike,
    metrics: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """``task``'s network, with what rebuilds it (arguments, hyperparameters, tokenizers), as a pretrained folder."""
    return save_pretrained(
        out_dir,
        task.net,
        arguments=task.network_arguments,
        task_arguments=dict(task.hparams),
        tokenizers=dict(task.tokenizer_jsons),
        metrics=metrics,
        dtype=dtype,
    )


def load_task(source: str | os.PathLike, expected: type[TaskModule] | None = None) -> TaskModule:
    """A task from a ``.ckpt`` or from a pretrained source (folder, zoo entry name, URL, ``hf://``),
    refused unless it is an ``expected`` task when one is given."""
    if str(source).endswith(".ckpt") or Path(source).is_file():
        task = load_task_checkpoint(source)
    else:
        task = task_from_pretrained(source)
    if expected is not None and not isinstance(task, expected):
        raise ValueError(
            f"{source} holds a {tasks.of_class(type(task)).name} model, not a {tasks.of_class(expected).name} one"
        )
    return task


def task_from_pretrained(directory: str | os.PathLike) -> TaskModule:
    """The Lightning task of a pretrained folder (or zoo entry name, URL, ``hf://``; see ``zoo.storage.hub``),
    ready to predict, test or fine-tune."""
    directory = resolve(directory)
    pretrained = load_pretrained(directory)
    config = pretrained.config
    task = tasks.get(config.task).load("lightning_module")(**config.task_arguments)
    if isinstance(pretrained.network, Ensemble):
        task.net = pretrained.network
    else:
        task.net.load_state_dict(pretrained.network.state_dict())
    task.tokenizer_jsons = {name: tokenizer.to_str() for name, tokenizer in pretrained.tokenizers.items()}
    return task.eval()


def load_pretrained_weights(task: TaskModule, directory: str | os.PathLike) -> None:
    """Copy a pretrained folder's weights into ``task`` (built from a config) to fine-tune or
    evaluate it; an ensemble folder's network replaces the task's."""
    pretrained = load_pretrained(directory)
    config = pretrained.config
    ours = tasks.of_class(type(task)).name
    if config.task != ours:
        raise ValueError(f"{directory} holds a {config.task} model, the config builds a {ours} one")
    task.check_trained_on_same_data(config.task_arguments, str(directory))
    if isinstance(pretrained.network, Ensemble):  # its members replace the config's network
        task.net = pretrained.network
        return
    try:
        task.net.load_state_dict(pretrained.network.state_dict())
    except RuntimeError as err:
        raise ValueError(
            f"the weights of {directory} do not fit the model of the config (use the config it was trained "
            f"with, see its metrics.json): {err}"
        ) from err


def write_ensemble(sources: list[str], out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """A pretrained folder that predicts with the average of ``sources`` (``.ckpt`` files, folders,
    zoo entries; see ``zoo.networks.ensemble``), which must be models of one task, vocabulary and label set;
    weights stored in ``dtype`` as ``publish`` does."""
    members = _same_task_and_data([load_task(source) for source in sources], sources)
    nested = [source for source, task in zip(sources, members, strict=True) if isinstance(task.net, Ensemble)]
    if nested:
        raise ValueError(f"{', '.join(nested)}: already an ensemble; list its members instead")
    first = members[0]
    arguments = [task.network_arguments for task in members]
    ensemble = tasks.of_class(type(first)).load("ensemble").from_networks([task.net for task in members], arguments)
    return save_pretrained(
        out_dir,
        ensemble,
        arguments={"members": arguments},
        task_arguments=dict(first.hparams),
        tokenizers=dict(first.tokenizer_jsons),
        dtype=dtype,
    )


def average_checkpoints(sources: list[str], out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """A pretrained folder whose weights are the mean of ``sources``' (checkpoints of one run, or
    of one architecture and data): integer buffers are taken from the last; stored in ``dtype``."""
    members = _same_task_and_data([load_task(source) for source in sources], sources)
    last = members[-1]
    for source, task in zip(sources, members, strict=True):
        if task.network_arguments != last.network_arguments:
            raise ValueError(f"{source} has another architecture than {sources[-1]}: only like weights can be averaged")
    states = [task.net.state_dict() for task in members]
    averaged = {
        name: torch.stack([state[name].float() for state in states]).mean(0).to(value.dtype)
        if value.is_floating_point()
        else value
        for name, value in states[-1].items()
    }
    last.net.load_state_dict(averaged)
    return save_task(last, out_dir, dtype=dtype)


def _same_task_and_data(members: list[TaskModule], sources: list[str]) -> list[TaskModule]:
    """``members``, refused unless they are models of one task with the same vocabularies and labels."""
    if not members:
        raise ValueError("name at least one model")
    first = members[0]
    task = tasks.of_class(type(first)).name
    for source, member in zip(sources[1:], members[1:], strict=True):
        other = tasks.of_class(type(member)).name
        if other != task:
            raise ValueError(f"{source} holds a {other} model and {sources[0]} a {task} one")
        difference = vocabulary_difference(member.tokenizer_jsons, first.tokenizer_jsons)
        if difference:
            raise ValueError(f"{source} has {difference} than {sources[0]}")
        first.check_trained_on_same_data(dict(member.hparams), source)
    return members
