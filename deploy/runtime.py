"""Predictors for exported folders: onnxruntime, numpy and ``tokenizers`` only, never torch.

``load(folder)`` reads the folder's checked ``config.json`` (``zoo.common.formats.ExportConfig``) and returns the
predictor its task names (``zoo.common.tasks``). Text goes through the same pipeline as in training and in
the PyTorch tasks (``zoo.common.text``), and decoding through the same loops (``zoo.common.decoding``), so a folder
predicts what its network predicts. Sessions are tuned for throughput: every graph optimization, and
``threads`` intra-op threads (default: onnxruntime's choice, one per core); one thread per session is
best when many processes or requests run side by side. ``memory_arena`` (``session_options``) keeps each
call's buffers for the next; ``rnnzoo serve`` turns it off.
"""

import math
import os
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import onnxruntime as ort
from tokenizers import Tokenizer

from deploy.external_data import check_no_external_data
from zoo.common import tasks, text
from zoo.common.formats import CONFIG_FILE, ExportConfig, FormatError, folder_file, read_export_config
from zoo.common.predict import predict


class Cancelled(Exception):
    """Whoever asked for the answer no longer waits for it (a timeout, a client that left)."""


# Set by ``cancellable`` around a predictor call in a worker thread; decoding loops check it between
# steps (``check_cancelled``), so abandoned work stops within a step instead of running to the end.
_cancel: ContextVar[threading.Event | None] = ContextVar("cancel", default=None)


@contextmanager
def cancellable(event: threading.Event):
    """Predictor calls made inside raise ``Cancelled`` at their next decoding step once ``event`` is set."""
    token = _cancel.set(event)
    try:
        yield
    finally:
        _cancel.reset(token)


def check_cancelled() -> None:
    event = _cancel.get()
    if event is not None and event.is_set():
        raise Cancelled


def make_session(path: Path, threads: int | None = None, memory_arena: bool = True) -> ort.InferenceSession:
    check_no_external_data(path)  # before onnxruntime reads it (deploy.external_data says why)
    return ort.InferenceSession(str(path), session_options(threads, memory_arena), providers=["CPUExecutionProvider"])


def session_options(threads: int | None = None, memory_arena: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # onnxruntime's memory arena (its default) keeps the pages of one call's buffers for the next: without
    # it every call maps and faults in its buffers afresh (the language model's logits at 32 x 35 tokens
    # most of all). It keeps them for good, though: a service answering calls of every size stays at
    # the sum of each session's largest, which is why ``rnnzoo serve`` runs without it (docs/export.md
    # has the figures).
    options.enable_cpu_mem_arena = memory_arena
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


class Predictor:
    """What every task's predictor shares: its config, tokenizers and checked ONNX sessions."""

    graph_files: tuple[str, ...] = ("model.onnx",)
    needs_labels = False

    def __init__(self, folder: Path, config: ExportConfig, threads: int | None = None, memory_arena: bool = True):
        self.folder, self.config = folder, config
        if set(config.graphs) != set(self.graph_files):
            raise ValueError(f"{folder}: a {config.task} export has the graphs {list(self.graph_files)}")
        if self.needs_labels and not config.labels:
            raise ValueError(f"{folder / CONFIG_FILE}: a {config.task} export needs its labels")
        self.tokenizers = {name: text.read_tokenizer(folder, file) for name, file in config.tokenizers.items()}
        self.sessions = {}
        for name in self.graph_files:
            session = make_session(folder_file(folder, name), threads, memory_arena)
            inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
            described = config.graphs[name]
            if (inputs, outputs) != (described.input_names(), described.output_names()):
                raise FormatError(
                    f"{name}: its inputs/outputs {inputs}/{outputs} are not those {CONFIG_FILE} describes "
                    f"({described.input_names()}/{described.output_names()})"
                )
            self.sessions[name] = session
        self.special_tokens = config.special_tokens

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def labels(self) -> list[str] | None:
        return self.config.labels

    @property
    def decoding(self):
        return self.config.decoding

    def get_tokenizer(self, name: str) -> Tokenizer:
        return self.tokenizers[name]

    def description(self) -> dict:
        """What a client needs to know beyond the task and labels (``GET /v1/models``)."""
        return {}

    def predict(self, items: list, options=None, **limits) -> list[dict]:
        """The task's records for ``items`` (``zoo.common.predict``: the same at every entry point);
        ``limits`` bound the work per onnxruntime call (``budget``)."""
        return predict(self, items, options, **limits)

    def encode(self, texts: list[str], tokenizer: str = "tokenizer", end: str | None = None):
        """Right-padded ids ``(B, T)`` and lengths ``(B,)`` of raw texts (``zoo.common.text``)."""
        tokenizer = self.tokenizers[tokenizer]
        return text.pad(text.encode(tokenizer, texts, end=end), text.pad_id(tokenizer))


def sub_batches(sizes: list[tuple[int, ...]], budget: int) -> list[list[int]]:
    """The indices of ``sizes`` (each item's length along every padded axis) in groups, similar sizes
    together, whose padded size (items x the largest length on each axis) is at most ``budget``;
    an item over the budget forms a group by itself."""
    groups: list[list[int]] = []
    shape: tuple[int, ...] = ()
    for i in sorted(range(len(sizes)), key=sizes.__getitem__):
        grown = tuple(map(max, shape, sizes[i]))
        if groups and (len(groups[-1]) + 1) * math.prod(grown) <= budget:
            groups[-1].append(i)
            shape = grown
        else:
            groups.append([i])
            shape = sizes[i]
    return groups


def load(directory: str | os.PathLike, threads: int | None = None, memory_arena: bool = True) -> Predictor:
    """The predictor of an exported folder (written by ``rnnzoo export``); ``memory_arena``: see ``session_options``."""
    folder = Path(directory)
    config = read_export_config(folder)
    predictor = tasks.get(config.task, str(folder / CONFIG_FILE)).load("predictor")
    return predictor(folder, config, threads, memory_arena)
