"""Predictors for exported folders: onnxruntime, numpy and ``tokenizers`` only, never torch.

``load(folder)`` reads the folder's checked ``config.json`` (``zoo.formats.ExportConfig``) and returns the
predictor its task names (``zoo.tasks``). Text goes through the same pipeline as in training and in
the PyTorch tasks (``zoo.text``), and decoding through the same loops (``zoo.decoding``), so a folder
predicts what its network predicts. Sessions are tuned for throughput: every graph optimization, and
``threads`` intra-op threads (default: onnxruntime's choice, one per core); one thread per session is
best when many processes or requests run side by side. ``memory_arena`` (``session_options``) keeps each
call's buffers for the next; ``rnnzoo serve`` turns it off.
"""

import functools
import itertools
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from deploy import signatures as names
from deploy.external_data import check_no_external_data
from zoo import decoding, tasks, text
from zoo.formats import CONFIG_FILE, ExportConfig, FormatError, folder_file, read_export_config
from zoo.predict import GenerationOptions, TooLarge, TranslationOptions, predict, target_budget

# Padded cells per onnxruntime call. A batch is split into calls under these, similar lengths
# together, so that one long text neither pads the others nor multiplies a call's memory: with the
# shipped models each is 50-80 MB at peak (a classifier token costs ~13 KB in its BiLSTM, a tagger
# character ~1.3 KB in the character BiLSTM, a translator source token ~6-10 KB per beam).
CLASSIFIER_TOKENS = 4096  # texts x tokens
TAGGER_CHARACTERS = 32_768  # sentences x words x characters per word
TRANSLATOR_TOKEN_BEAMS = 8192  # texts x source tokens x beam; one text over it is refused (TooLarge)
FORECASTER_WINDOWS = 256  # windows per call (a 720 x 7 window is 20 KB; SegRNN's state per window ~14 KB)


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
    # it every call maps and faults in its buffers afresh, which made the language model's 45 MB of
    # logits at 32 x 35 tokens 1.66x slower (99.2 -> 59.7 ms on 1 thread of a 2-core CPU). It keeps
    # them for good, though: a service answering calls of every size stays at the sum of each
    # session's largest, which is why ``rnnzoo serve`` runs without it (docs/export.md has the figures).
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
        """The task's records for ``items`` (``zoo.predict``: the same at every entry point);
        ``limits`` bound the work per onnxruntime call (``budget``)."""
        return predict(self, items, options, **limits)

    def encode(self, texts: list[str], tokenizer: str = "tokenizer", end: str | None = None):
        """Right-padded ids ``(B, T)`` and lengths ``(B,)`` of raw texts (``zoo.text``)."""
        tokenizer = self.tokenizers[tokenizer]
        return text.pad(text.encode(tokenizer, texts, end=end), text.pad_id(tokenizer))


class ClassifierPredictor(Predictor):
    needs_labels = True

    def logits(self, texts: list[str], budget: int = CLASSIFIER_TOKENS) -> np.ndarray:
        """``(B, classes)``, in calls of at most ``budget`` padded tokens (a longer text runs alone)."""
        ids, lengths = self.encode(texts)
        logits = [None] * len(texts)
        for rows in sub_batches([(int(n),) for n in lengths], budget):
            feed = dict(zip(names.CLASSIFIER_INPUTS, (ids[rows, : lengths[rows].max()], lengths[rows]), strict=True))
            (batch_logits,) = self.sessions["model.onnx"].run(names.CLASSIFIER_OUTPUTS, feed)
            for row, values in zip(rows, batch_logits, strict=True):
                logits[row] = values
        return np.stack(logits)

    def classify(self, texts: list[str], budget: int = CLASSIFIER_TOKENS) -> list[dict]:
        """``[{"text", "label", "probability", "probabilities"}]`` per text (``zoo.predict.Classification``)."""
        return self.predict(texts, budget=budget)


@dataclass(frozen=True)
class Carried:
    """What a language model carries from one request of a sequence to the next."""

    state: dict[str, np.ndarray]  # after every token read but the last
    last: int  # the last token read: the next request reads it first, then its own text


class LanguageModelPredictor(Predictor):
    @functools.cached_property
    def state_bytes(self) -> int:
        """The memory a sequence's state takes (``continue_sequence``)."""
        return sum(value.nbytes for value in self.zero_state(1).values())

    def zero_state(self, batch_size: int) -> dict[str, np.ndarray]:
        state = self.config.state
        shape = [batch_size if axis == "batch" else axis for axis in state.shape]
        return {name: np.zeros(shape, dtype=np.float32) for name in state.inputs}

    def step(self, tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits ``(B, T, V)`` for ``tokens`` ``(B, T)`` and the state after them."""
        check_cancelled()
        spec = self.config.state
        feed = {names.TOKENS: np.asarray(tokens, dtype=np.int64), **state}
        outputs = self.sessions["model.onnx"].run([names.LOGITS, *spec.outputs], feed)
        return outputs[0], dict(zip(spec.inputs, outputs[1:], strict=True))

    def continue_ids(self, prompt_ids: list[int], options: GenerationOptions) -> list[int]:
        eos = self.special_tokens["tokenizer"][text.EOS]
        return decoding.continue_ids(
            self.step, self.zero_state(1), prompt_ids, eos,
            options.max_new_tokens, options.temperature, options.top_k, options.seed,
        )  # fmt: skip

    def continue_sequence(
        self, carried: Carried | None, prompt: str, options: GenerationOptions | None = None
    ) -> tuple[dict, Carried]:
        """A sequence of requests as one text: ``prompt`` is read after what ``carried`` holds (None: the
        sequence starts, as ``predict`` starts a prompt) and continued from there. Returns the record of
        ``zoo.predict.Continuation`` (this ``prompt`` and its continuation) and what to carry into the
        sequence's next request: the state after ``prompt``, not after the continuation, so the next
        chunk follows the client's text. Chunks split between words continue as their whole text does."""
        options = options or GenerationOptions()
        tokenizer = self.tokenizers["tokenizer"]
        ids = text.prompt_ids(tokenizer, prompt, None if carried is None else carried.last)
        state = self.zero_state(1) if carried is None else carried.state
        if len(ids) > 1:
            _, state = decoding.read(self.step, state, ids[:-1])
        logits, after = self.step(np.array([ids[-1:]], dtype=np.int64), state)
        new = list(self.sampled_ids(logits, after, options))
        record = {"prompt": prompt, "continuation": text.continuation_text(tokenizer, ids, new)}
        return record, Carried(state, ids[-1])

    def stream(self, prompt: str, options: GenerationOptions | None = None) -> Iterator[str]:
        """``generate``'s text as it is made: the prompt as the tokenizer reads it, then a piece per new
        token; the pieces add up to the continuation ``predict`` gives for the same options and seed."""
        options = options or GenerationOptions()
        tokenizer = self.tokenizers["tokenizer"]
        ids = text.prompt_ids(tokenizer, prompt)
        logits, state = decoding.read(self.step, self.zero_state(1), ids)
        yield from text.pieces(tokenizer, ids[1:], self.sampled_ids(logits, state, options))

    def sampled_ids(self, logits: np.ndarray, state: dict, options: GenerationOptions) -> Iterator[int]:
        eos = self.special_tokens["tokenizer"][text.EOS]
        return decoding.sampled_ids(
            self.step, logits, state, eos, options.max_new_tokens, options.temperature, options.top_k, options.seed
        )

    def generate(
        self,
        prompt: str = "",
        max_new_tokens: int = decoding.MAX_NEW_TOKENS,
        temperature: float = decoding.TEMPERATURE,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> str:
        """``prompt`` and its continuation (``zoo.predict.generate``), to ``<eos>`` or ``max_new_tokens``."""
        options = GenerationOptions(max_new_tokens, temperature, top_k, seed)
        (record,) = self.predict([prompt], options)
        return record["continuation"]


class TaggerPredictor(Predictor):
    needs_labels = True

    def tag(self, sentences: list[str] | list[list[str]], budget: int = TAGGER_CHARACTERS) -> list[dict]:
        """``[{"words", "tags"}]`` per sentence (``zoo.predict.Tagging``); a sentence is a string (split on
        whitespace) or its words."""
        return self.predict(sentences, budget=budget)

    def tag_ids(self, sentences: list[list[str]], budget: int = TAGGER_CHARACTERS) -> list[list[int]]:
        """Each sentence's tag ids, in calls that pad at most ``budget`` cells (sentences x words, x
        characters per word if the model reads them); a sentence over it runs alone."""
        chars = "char_tokenizer" in self.tokenizers
        sizes = [(len(w), min(max(map(len, w)), text.MAX_WORD_CHARACTERS) if chars else 1) for w in sentences]
        results = [None] * len(sentences)
        for rows in sub_batches(sizes, budget):
            words, feed = self.features([sentences[i] for i in rows])
            tags = self.sessions["model.onnx"].run([names.TAGS], feed)[0]
            for row, i in enumerate(rows):
                results[i] = tags[row, : len(words[row])].tolist()
        return results

    def features(self, sentences: list[str] | list[list[str]]) -> tuple[list[list[str]], dict[str, np.ndarray]]:
        """The sentences' words and the graph's inputs: padded word ids, lengths (and characters)."""
        sentences = text.split_words(sentences)
        word_tokenizer = self.tokenizers["tokenizer"]
        encoded = text.encode_words(word_tokenizer, self.tokenizers.get("char_tokenizer"), sentences)
        tokens, lengths = text.pad([ids for ids, _ in encoded], text.pad_id(word_tokenizer))
        feed = {names.TOKENS: tokens, names.LENGTHS: lengths}
        if "char_tokenizer" in self.tokenizers:
            chars = text.pad_words([chars for _, chars in encoded], tokens.shape[1])
            feed[names.CHARS], feed[names.CHAR_LENGTHS] = chars
        return sentences, feed


class TranslatorPredictor(Predictor):
    """Greedy and beam search (``zoo.decoding``) over the encoder graph and the decoder-step graph,
    or over every member's pair for an ensemble, whose next-word probabilities each step averages."""

    def __init__(self, folder: Path, config: ExportConfig, threads: int | None = None, memory_arena: bool = True):
        self.members = config.translator_members()
        if not self.members:
            raise FormatError(f"{folder / CONFIG_FILE}: malformed members; export the model again")
        self.graph_files = tuple(file for member in self.members for file in (member.encoder, member.decoder))
        super().__init__(folder, config, threads, memory_arena)
        # Where each decoder input's batch axis is, from the shapes in config.json (beam search reorders it).
        self.batch_axis = [
            {value.name: value.shape.index("batch") for value in config.graphs[member.decoder].inputs}
            for member in self.members
        ]
        self.bos, self.eos = (self.special_tokens["target_tokenizer"][t] for t in (text.BOS, text.EOS))
        self.has_attention = all(
            names.ATTENTION in config.graphs[member.decoder].output_names() for member in self.members
        )

    def description(self) -> dict:
        return {"beam_size": self.config.decoding.beam_size, "attention": self.has_attention}

    def require_attention(self) -> None:
        if not self.has_attention:
            reads = "its decoder reads" if len(self.members) == 1 else "not every member's decoder reads"
            raise ValueError(f"{self.folder.name} has no attention weights to return: {reads} attention")

    def encode_sources(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Padded source ids ending in ``<eos>`` and their lengths."""
        return self.encode(texts, "source_tokenizer", end=text.EOS)

    def encode_graph(self, source: np.ndarray, lengths: np.ndarray) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
        """Each member's memory its decoder reads and its initial state, by graph input name."""
        memory, state = [], []
        feed = dict(zip(names.ENCODER_INPUTS, (source, lengths), strict=True))
        for member in self.members:
            values = self.sessions[member.encoder].run([*member.memory, *member.state.inputs], feed)
            memory.append(dict(zip(member.memory, values[: len(member.memory)], strict=True)))
            state.append(dict(zip(member.state.inputs, values[len(member.memory) :], strict=True)))
        return tuple(memory), tuple(state)

    def run_decoders(self, output: str, tokens: np.ndarray, state: tuple, memory: tuple) -> tuple[list, tuple]:
        """Every member's decoder step: its ``output`` (``logits`` or ``attention``) and its next state."""
        check_cancelled()
        outputs, next_state = [], []
        for member, member_state, member_memory in zip(self.members, state, memory, strict=True):
            feed = {names.TOKENS: tokens, **member_state, **member_memory}
            first, *new = self.sessions[member.decoder].run([output, *member.state.outputs], feed)
            outputs.append(first)
            next_state.append(dict(zip(member.state.inputs, new, strict=True)))
        return outputs, tuple(next_state)

    def step(self, tokens: np.ndarray, state: tuple, memory: tuple) -> tuple[np.ndarray, tuple]:
        """Next-word logits: one network's own, an ensemble's log mean probabilities (as ``zoo.ensemble``)."""
        logits, state = self.run_decoders(names.LOGITS, tokens, state, memory)
        return (logits[0] if len(logits) == 1 else decoding.log_mean_probabilities(logits)), state

    def translate(
        self,
        texts: list[str],
        beam_size: int | None = None,
        max_new_tokens: int | None = None,
        budget: int = TRANSLATOR_TOKEN_BEAMS,
        attention: bool = False,
    ) -> list[str] | list[dict]:
        """Translations of raw sentences; ``beam_size`` 1 is greedy (default: the model's). With
        ``attention``, the records of ``zoo.predict.Translation`` with the tokens and weights."""
        records = self.predict(texts, TranslationOptions(beam_size, max_new_tokens, attention), budget=budget)
        return records if attention else [record["translation"] for record in records]

    def stream(
        self, source: str, max_new_tokens: int | None = None, budget: int = TRANSLATOR_TOKEN_BEAMS
    ) -> Iterator[str]:
        """The greedy translation of ``source`` as it is decoded, a piece per target token; the pieces add
        up to ``translate([source], beam_size=1)``'s. A text of more than ``budget`` tokens raises ``TooLarge``."""
        (ids,) = text.encode(self.tokenizers["source_tokenizer"], [source], end=text.EOS)
        if len(ids) > budget:
            raise TooLarge(f"the text has {len(ids)} source tokens; a translation may have {budget}: split it")
        max_new = target_budget(self, TranslationOptions(1, max_new_tokens), [ids])
        memory, state = self.encode_graph(np.array([ids], dtype=np.int64), np.array([len(ids)], dtype=np.int64))
        steps = decoding.greedy_steps(lambda t, s: self.step(t, s, memory), state, 1, self.bos, self.eos, max_new)
        tokens = itertools.takewhile(lambda token: token != self.eos, (int(tokens[0]) for tokens in steps))
        yield from text.pieces(self.tokenizers["target_tokenizer"], [], tokens)

    def translate_ids(
        self, sources: list[list[int]], beam_size: int, max_new_tokens: int, budget: int = TRANSLATOR_TOKEN_BEAMS
    ) -> list[list[int]]:
        """Target ids of source ids (ending in ``<eos>``). Each call decodes at most ``budget`` source
        tokens x beams, since every beam reads its own copy of the encoder's memory; a text that alone
        needs more raises ``TooLarge``."""
        source, lengths = text.pad(sources, text.pad_id(self.tokenizers["source_tokenizer"]))
        too_long = [i for i, n in enumerate(lengths) if n * beam_size > budget]
        if too_long:
            raise TooLarge(
                f"texts {too_long} have up to {lengths[too_long].max()} source tokens; at beam {beam_size} a text "
                f"may have {budget // beam_size} (a budget of {budget} tokens x beams): split it or lower beam_size"
            )
        ids = [None] * len(sources)
        for rows in sub_batches([(int(n),) for n in lengths], budget // beam_size):
            decoded = self.decode(source[rows, : lengths[rows].max()], lengths[rows], beam_size, max_new_tokens)
            for row, sequence in zip(rows, decoded, strict=True):
                ids[row] = sequence
        return ids

    def attention_weights(
        self, sources: list[list[int]], targets: list[list[int]], budget: int = TRANSLATOR_TOKEN_BEAMS
    ) -> list[np.ndarray]:
        """Per text, the attention ``(target tokens + 1, source tokens)`` of the decoder reading its
        target back (teacher forcing), the last row being the step after it (that predicted ``<eos>``):
        a step depends only on the tokens before it, so these are the weights the search saw along the
        translation it chose. An ensemble's are the mean of its members'."""
        source, lengths = text.pad(sources, text.pad_id(self.tokenizers["source_tokenizer"]))
        weights = [None] * len(targets)
        for rows in sub_batches([(int(n),) for n in lengths], budget):
            memory, state = self.encode_graph(source[rows, : lengths[rows].max()], lengths[rows])
            steps = 1 + max(len(targets[row]) for row in rows)
            previous = np.full((len(rows), steps), self.eos, dtype=np.int64)
            previous[:, 0] = self.bos
            for j, row in enumerate(rows):
                previous[j, 1 : 1 + len(targets[row])] = targets[row]
            seen = []
            for t in range(steps):
                per_member, state = self.run_decoders(names.ATTENTION, previous[:, t], state, memory)
                seen.append(np.mean(per_member, 0))
            seen = np.stack(seen, 1)
            for j, row in enumerate(rows):
                weights[row] = seen[j, : 1 + len(targets[row]), : lengths[row]]
        return weights

    def decode(self, source: np.ndarray, lengths: np.ndarray, beam_size: int, max_new_tokens: int) -> list[list[int]]:
        """Target ids of padded sources, as ``zoo.seq2seq.translate_ids`` decodes them in PyTorch."""
        memory, state = self.encode_graph(source, lengths)
        batch = len(source)
        if beam_size == 1:
            return decoding.greedy(
                lambda t, s: self.step(t, s, memory), state, batch, self.bos, self.eos, max_new_tokens
            )
        rows = decoding.beam_rows(batch, beam_size)
        memory = tuple({name: value[rows] for name, value in member.items()} for member in memory)
        state = self._select(state, rows)
        length_penalty = self.config.decoding.length_penalty
        return decoding.beam_search(
            lambda t, s: self.step(t, s, memory), self._select, state, batch, beam_size,
            self.bos, self.eos, max_new_tokens, length_penalty,
        )  # fmt: skip

    def _select(self, state: tuple[dict, ...], rows: np.ndarray) -> tuple[dict, ...]:
        """Rows ``rows`` of every member's decoder state, along each tensor's batch axis."""
        return tuple(
            {name: np.take(value, rows, axis=axes[name]) for name, value in member_state.items()}
            for member_state, axes in zip(state, self.batch_axis, strict=True)
        )


class ForecasterPredictor(Predictor):
    """The forecast of windows in the data's units (the graph scales them as the network was trained)."""

    def __init__(self, folder: Path, config: ExportConfig, threads: int | None = None, memory_arena: bool = True):
        super().__init__(folder, config, threads, memory_arena)
        graph = config.graphs["model.onnx"]
        shapes = [value.shape for value in (*graph.inputs, *graph.outputs)]
        fixed = all(len(shape) == 3 and all(isinstance(size, int) for size in shape[1:]) for shape in shapes)
        if not config.columns or len(shapes) != 2 or not fixed or shapes[0][2] != len(config.columns):
            raise FormatError(f"{folder / CONFIG_FILE}: a forecasting export needs its columns, one per input column")
        self.input_length, self.horizon = shapes[0][1], shapes[1][1]

    @property
    def columns(self) -> list[str]:
        return self.config.columns

    def description(self) -> dict:
        return {"columns": self.columns, "input_length": self.input_length, "horizon": self.horizon}

    def forecast(self, series: list, budget: int = FORECASTER_WINDOWS) -> list[dict]:
        """``[{"columns", "forecast"}]`` per window (``zoo.predict.Forecast``); a window is ``input_length``
        rows of one number per column, in the data's units."""
        return self.predict(series, budget=budget)

    def forecast_values(self, windows: np.ndarray, budget: int = FORECASTER_WINDOWS) -> np.ndarray:
        """``(B, H, C)`` for windows ``(B, L, C)``, in calls of at most ``budget`` windows."""
        session = self.sessions["model.onnx"]
        calls = [windows[start : start + budget] for start in range(0, len(windows), budget)]
        return np.concatenate([session.run([names.FORECAST], {names.SERIES: call})[0] for call in calls])


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
