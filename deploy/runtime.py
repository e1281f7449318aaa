"""Predictors for exported folders: onnxruntime, numpy and ``tokenizers`` only, never torch.

``load(folder)`` reads the folder's ``config.json`` and returns the predictor of its task with the
same tokenization and post-processing as training. Sessions are tuned for throughput: every graph
optimization, and ``threads`` intra-op threads (default: onnxruntime's choice, one per core); one
thread per session is best when many processes or requests run side by side.
"""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

FORMAT_VERSION = 1

# Padded cells per onnxruntime call. A batch is split into calls under these, similar lengths
# together, so that one long text neither pads the others nor multiplies a call's memory: with the
# shipped models each is 50-80 MB at peak (a classifier token costs ~13 KB in its BiLSTM, a tagger
# character ~1.3 KB in the character BiLSTM, a translator source token ~6-10 KB per beam).
CLASSIFIER_TOKENS = 4096  # texts x tokens
TAGGER_CHARACTERS = 32_768  # sentences x words x characters per word
TRANSLATOR_TOKEN_BEAMS = 8192  # texts x source tokens x beam; one text over it is refused (TooLarge)
MAX_WORD_CHARACTERS = 64  # characters of a word the tagger reads (the longest CoNLL-2003 word has 61)
PROMPT_CHUNK = 256  # prompt tokens per language-model call: logits are (tokens, vocabulary)


class TooLarge(ValueError):
    """One input needs more work than a predictor call may do."""


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The arena keeps its peak size for good, and shapes change with every request: without it a
    # long request's memory goes back to the allocator when the call ends.
    options.enable_cpu_mem_arena = False
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Predictor:
    """What every task's predictor shares: its config, tokenizers and ONNX sessions."""

    def __init__(self, folder: Path, config: dict, threads: int | None = None):
        self.folder, self.config = folder, config
        self.tokenizers = {
            name: Tokenizer.from_file(str(folder_file(folder, file))) for name, file in config["tokenizers"].items()
        }
        self.sessions = {name: make_session(folder_file(folder, name), threads) for name in config["graphs"]}
        self.special_tokens = config["special_tokens"]

    @property
    def task(self) -> str:
        return self.config["task"]

    def encode(self, texts: list[str], tokenizer: str = "tokenizer") -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids ``(B, T)`` and lengths ``(B,)``; an empty text is refused."""
        if isinstance(texts, str) or not texts:
            raise ValueError("give a non-empty list of texts")
        check_unicode(texts)
        encodings = self.tokenizers[tokenizer].encode_batch(list(texts))
        empty = [i for i, encoding in enumerate(encodings) if not encoding.ids]
        if empty:
            raise ValueError(f"texts {empty} are empty after tokenization")
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        ids = np.full((len(encodings), lengths.max()), self.special_tokens[tokenizer]["<pad>"], dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
        return ids, lengths


class ClassifierPredictor(Predictor):
    def logits(self, texts: list[str], budget: int = CLASSIFIER_TOKENS) -> np.ndarray:
        """``(B, classes)``, in calls of at most ``budget`` padded tokens (a longer text runs alone)."""
        ids, lengths = self.encode(texts)
        logits = [None] * len(texts)
        for rows in sub_batches([(int(n),) for n in lengths], budget):
            feed = {"tokens": ids[rows, : lengths[rows].max()], "lengths": lengths[rows]}
            for row, values in zip(rows, self.sessions["model.onnx"].run(["logits"], feed)[0], strict=True):
                logits[row] = values
        return np.stack(logits)

    def classify(self, texts: list[str]) -> list[dict]:
        """``[{"text", "label", "probability"}]`` per text, as ``rnnzoo predict`` prints them."""
        probabilities = softmax(self.logits(texts))
        best = probabilities.argmax(-1)
        labels = self.config["labels"]
        return [
            {"text": text, "label": labels[i], "probability": round(float(p[i]), 4)}
            for text, i, p in zip(texts, best, probabilities, strict=True)
        ]


class LanguageModelPredictor(Predictor):
    def zero_state(self, batch_size: int) -> dict[str, np.ndarray]:
        state = self.config["state"]["rnn"]
        shape = (state["num_layers"], batch_size, state["hidden_size"])
        names = ["h", "c"] if state["cell"] == "lstm" else ["h"]
        return {name: np.zeros(shape, dtype=np.float32) for name in names}

    def step(self, tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits ``(B, T, V)`` for ``tokens`` ``(B, T)`` and the state after them."""
        outputs = self.sessions["model.onnx"].run(None, {"tokens": tokens.astype(np.int64), **state})
        return outputs[0], {name: value for name, value in zip(state, outputs[1:], strict=True)}

    def generate(
        self,
        prompt: str = "",
        max_tokens: int = 50,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> str:
        """Continue ``prompt`` as a new sentence; stops at ``<eos>`` or after ``max_tokens``."""
        if not 0 <= temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        check_unicode([prompt], "prompt")
        tokenizer = self.tokenizers["tokenizer"]
        eos_id = self.special_tokens["tokenizer"]["<eos>"]
        prompt_ids = [eos_id] + tokenizer.encode(prompt).ids
        rng = np.random.default_rng(seed)
        state = self.zero_state(1)
        for start in range(0, len(prompt_ids), PROMPT_CHUNK):  # the state carries over: same result, bounded logits
            logits, state = self.step(np.array([prompt_ids[start : start + PROMPT_CHUNK]]), state)
        new_ids = []
        for _ in range(max_tokens):
            token = sample(logits[0, -1], temperature, top_k, rng)
            if token == eos_id:
                break
            new_ids.append(token)
            logits, state = self.step(np.array([[token]]), state)
        return tokenizer.decode(prompt_ids[1:] + new_ids, skip_special_tokens=False)


class TaggerPredictor(Predictor):
    def tag(self, sentences: list[str] | list[list[str]], budget: int = TAGGER_CHARACTERS) -> list[dict]:
        """``[{"words", "tags"}]`` per sentence; a sentence is a string (split on whitespace) or its words.
        Calls pad at most ``budget`` cells (sentences x words, x characters per word if the model reads
        them); a sentence over it runs alone."""
        sentences = self.words(sentences)
        chars = "char_tokenizer" in self.tokenizers
        sizes = [(len(w), min(max(map(len, w)), MAX_WORD_CHARACTERS) if chars else 1) for w in sentences]
        labels, results = self.config["labels"], [None] * len(sentences)
        for rows in sub_batches(sizes, budget):
            words, feed = self.features([sentences[i] for i in rows])
            tags = self.sessions["model.onnx"].run(["tags"], feed)[0]
            for row, i in enumerate(rows):
                results[i] = {"words": words[row], "tags": [labels[t] for t in tags[row, : len(words[row])]]}
        return results

    def words(self, sentences: list[str] | list[list[str]]) -> list[list[str]]:
        """Each sentence's words; empty sentences and words with whitespace are refused."""
        if isinstance(sentences, str) or not sentences:
            raise ValueError("give a non-empty list of sentences")
        sentences = [s.split() if isinstance(s, str) else list(s) for s in sentences]
        empty = [i for i, words in enumerate(sentences) if not words]
        if empty:
            raise ValueError(f"sentences {empty} are empty")
        if any(not isinstance(word, str) or len(word.split()) != 1 for words in sentences for word in words):
            raise ValueError("a word is not a string, contains whitespace or is empty")
        check_unicode([" ".join(words) for words in sentences], "sentences")
        return sentences

    def features(self, sentences: list[str] | list[list[str]]) -> tuple[list[list[str]], dict[str, np.ndarray]]:
        """The sentences' words and the graph's inputs: padded word ids, lengths (and characters)."""
        sentences = self.words(sentences)
        encodings = self.tokenizers["tokenizer"].encode_batch(sentences, is_pretokenized=True)
        lengths = np.array([len(words) for words in sentences], dtype=np.int64)
        feed = {"tokens": np.zeros((len(sentences), lengths.max()), dtype=np.int64), "lengths": lengths}
        for row, encoding in enumerate(encodings):
            feed["tokens"][row, : lengths[row]] = encoding.ids
        if "char_tokenizer" in self.tokenizers:
            feed |= self._chars(sentences, lengths.max())
        return sentences, feed

    def _chars(self, sentences: list[list[str]], time: int) -> dict[str, np.ndarray]:
        words = [word for sentence in sentences for word in sentence]
        # A longer word keeps its first and last characters: the character BiLSTM's final states read
        # the word from both ends (prefixes, suffixes), and no training word was that long.
        half = MAX_WORD_CHARACTERS // 2
        char_ids = [
            ids if len(ids) <= MAX_WORD_CHARACTERS else ids[:half] + ids[-half:]
            for ids in (e.ids for e in self.tokenizers["char_tokenizer"].encode_batch(words))
        ]
        chars = np.zeros((len(sentences), time, max(map(len, char_ids))), dtype=np.int64)
        char_lengths = np.zeros((len(sentences), time), dtype=np.int64)
        index = 0
        for row, sentence in enumerate(sentences):
            for col in range(len(sentence)):
                ids = char_ids[index]
                chars[row, col, : len(ids)] = ids
                char_lengths[row, col] = len(ids)
                index += 1
        return {"chars": chars, "char_lengths": char_lengths}


class TranslatorPredictor(Predictor):
    """Greedy and beam search over the encoder graph and the decoder-step graph, as in ``zoo.decoding``."""

    def __init__(self, folder: Path, config: dict, threads: int | None = None):
        super().__init__(folder, config, threads)
        self.encoder, self.decoder = self.sessions["encoder.onnx"], self.sessions["decoder.onnx"]
        self.state_names = [o["name"].removesuffix("_out") for o in config["graphs"]["decoder.onnx"]["outputs"][1:]]
        self.state_names = [name for name in self.state_names if name != "attention"]
        self.bos, self.eos = (self.special_tokens["target_tokenizer"][t] for t in ("<bos>", "<eos>"))

    def encode_sources(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Padded source ids ending in ``<eos>`` and their lengths; empty texts are refused."""
        if isinstance(texts, str) or not texts:
            raise ValueError("give a non-empty list of texts")
        empty = [i for i, text in enumerate(texts) if not text.strip()]
        if empty:
            raise ValueError(f"texts {empty} are empty: nothing to translate")
        check_unicode(texts)
        special = self.special_tokens["source_tokenizer"]
        rows = [e.ids + [special["<eos>"]] for e in self.tokenizers["source_tokenizer"].encode_batch(list(texts))]
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        source = np.full((len(rows), lengths.max()), special["<pad>"], dtype=np.int64)
        for i, row in enumerate(rows):
            source[i, : len(row)] = row
        return source, lengths

    def encode(self, source: np.ndarray, lengths: np.ndarray) -> tuple[dict, dict]:
        """The memory the decoder reads and its initial state, by graph input name."""
        names = [o["name"] for o in self.config["graphs"]["encoder.onnx"]["outputs"]]
        values = dict(zip(names, self.encoder.run(names, {"source": source, "lengths": lengths}), strict=True))
        state = {name: values.pop(name) for name in self.state_names}
        return values, state

    def step(self, tokens: np.ndarray, state: dict, memory: dict) -> tuple[np.ndarray, dict]:
        outputs = self.decoder.run(
            ["logits", *(f"{name}_out" for name in self.state_names)], {"tokens": tokens, **state, **memory}
        )
        return outputs[0], dict(zip(self.state_names, outputs[1:], strict=True))

    def translate(
        self,
        texts: list[str],
        beam_size: int | None = None,
        max_length: int | None = None,
        budget: int = TRANSLATOR_TOKEN_BEAMS,
    ) -> list[str]:
        """Translate raw sentences; ``beam_size`` 1 is greedy (default: the model's). Each call
        decodes at most ``budget`` source tokens x beams, since every beam reads its own copy of the
        encoder's memory; a text that alone needs more raises ``TooLarge``."""
        if beam_size is None:
            beam_size = self.config["decoding"].get("beam_size", 5)
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        source, lengths = self.encode_sources(texts)
        too_long = [i for i, n in enumerate(lengths) if n * beam_size > budget]
        if too_long:
            raise TooLarge(
                f"texts {too_long} have up to {lengths[too_long].max()} source tokens; at beam {beam_size} a text "
                f"may have {budget // beam_size} (a budget of {budget} tokens x beams): split it or lower beam_size"
            )
        max_length = max_length or self.config["decoding"].get("max_decode_length") or 2 * int(lengths.max()) + 10
        ids = [None] * len(texts)
        for rows in sub_batches([(int(n),) for n in lengths], budget // beam_size):
            memory, state = self.encode(source[rows, : lengths[rows].max()], lengths[rows])
            if beam_size == 1:
                decoded = self.greedy(memory, state, len(rows), max_length)
            else:
                decoded = self.beam_search(memory, state, len(rows), beam_size, max_length)
            for row, sequence in zip(rows, decoded, strict=True):
                ids[row] = sequence
        return self.tokenizers["target_tokenizer"].decode_batch(ids)

    def greedy(self, memory: dict, state: dict, batch: int, max_length: int) -> list[list[int]]:
        tokens = np.full(batch, self.bos, dtype=np.int64)
        done = np.zeros(batch, dtype=bool)
        steps = []
        for _ in range(max_length):
            logits, state = self.step(tokens, state, memory)
            tokens = np.where(done, self.eos, logits.argmax(-1))
            steps.append(tokens)
            done |= tokens == self.eos
            if done.all():
                break
        return [row[: row.index(self.eos)] if self.eos in row else row for row in np.stack(steps, 1).tolist()]

    def beam_search(
        self, memory: dict, state: dict, batch: int, k: int, max_length: int, length_penalty: float | None = None
    ) -> list[list[int]]:
        """``zoo.decoding.beam_search`` in numpy: the same 2k candidates, finishing rule and ranking."""
        if length_penalty is None:
            length_penalty = self.config["decoding"].get("length_penalty", 1.0)
        rows = np.repeat(np.arange(batch), k)
        memory = {name: value[rows] for name, value in memory.items()}
        state = self._select(state, rows)
        tokens = np.full(batch * k, self.bos, dtype=np.int64)
        scores = np.full((batch, k), -np.inf, dtype=np.float32)
        scores[:, 0] = 0.0
        sequences = np.empty((batch * k, 0), dtype=np.int64)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
        done = np.zeros(batch, dtype=bool)
        for step in range(1, max_length + 1):
            logits, state = self.step(tokens, state, memory)
            vocab = logits.shape[-1]
            candidates = (log_softmax(logits).reshape(batch, k, vocab) + scores[..., None]).reshape(batch, -1)
            top_scores, top_index = top_k(candidates, min(2 * k, k * vocab))
            top_beam, top_token = top_index // vocab, top_index % vocab
            is_eos = top_token == self.eos
            for b in np.flatnonzero(~done):
                for score, ends, beam in zip(top_scores[b, :k], is_eos[b, :k], top_beam[b, :k], strict=True):
                    if ends and score > -np.inf:
                        finished[b].append((score / step**length_penalty, sequences[b * k + beam].tolist()))
                done[b] = len(finished[b]) >= k
            if done.all():
                break
            alive_scores, order = top_k(np.where(is_eos, -np.inf, top_scores).astype(np.float32), k)
            beam = np.take_along_axis(top_beam, order, 1)
            tokens = np.take_along_axis(top_token, order, 1).reshape(-1)
            origin = (np.arange(batch)[:, None] * k + beam).reshape(-1)
            scores = np.where(done[:, None], -np.inf, alive_scores).astype(np.float32)
            state = self._select(state, origin)
            sequences = np.concatenate([sequences[origin], tokens[:, None]], axis=1)
        for b in np.flatnonzero(~done):  # out of steps: the live beams compete with what has finished
            for j in range(k):
                if scores[b, j] > -np.inf:
                    finished[b].append(
                        (scores[b, j] / sequences.shape[1] ** length_penalty, sequences[b * k + j].tolist())
                    )
        return [max(hypotheses, key=lambda item: item[0])[1] for hypotheses in finished]

    @staticmethod
    def _select(state: dict, rows: np.ndarray) -> dict:
        """Rows of a decoder state: axis 1 of the (layers, batch, size) recurrent states, axis 0 of ``feed``."""
        return {name: value[rows] if name == "feed" else value[:, rows] for name, value in state.items()}


SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(texts: list[str], what: str = "texts") -> None:
    """Refuse a lone surrogate (JSON can carry ``"\\udc80"``, a Python str can hold it): it is not
    Unicode text, and the tokenizers fail on it with a TypeError."""
    bad = [i for i, text in enumerate(texts) if not text.isascii() and SURROGATE.search(text)]
    if bad:
        raise ValueError(f"{what} {bad} contain a lone surrogate (not valid Unicode); send UTF-8 text")


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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest values of each row, best first, and their indices (like ``torch.topk``)."""
    part = np.argpartition(-values, k - 1, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(values, part, -1), axis=-1, kind="stable")
    index = np.take_along_axis(part, order, -1)
    return np.take_along_axis(values, index, -1), index


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def sample(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> int:
    """One token id from ``logits`` ``(V,)``: argmax at temperature 0, else top-k sampling."""
    if temperature == 0:
        return int(logits.argmax())
    with np.errstate(over="ignore"):  # shifted first: a tiny temperature sends the others to -inf, not nan
        logits = (logits.astype(np.float64) - logits.max()) / temperature
    if top_k is not None and top_k < logits.size:
        logits = np.where(logits < np.sort(logits)[-top_k], -np.inf, logits)
    return int(rng.choice(logits.size, p=softmax(logits)))


PREDICTORS: dict[str, type[Predictor]] = {
    "language_model": LanguageModelPredictor,
    "classification": ClassifierPredictor,
    "translation": TranslatorPredictor,
    "tagging": TaggerPredictor,
}


def folder_file(folder: Path, file_name) -> Path:
    """A file an export's ``config.json`` names, refused unless it is a plain name inside the folder
    (an absolute or ``../`` path would read files the folder does not hold). The same rule as
    ``zoo.pretrained.folder_file``, restated here because the runtime never imports torch."""
    if not isinstance(file_name, str) or file_name in ("", ".", "..") or Path(file_name).name != file_name:
        raise ValueError(f"{folder / 'config.json'}: {file_name!r} is not a plain file name inside the folder")
    return folder / file_name


def load(directory: str | os.PathLike, threads: int | None = None) -> Predictor:
    """The predictor of an exported folder (written by ``rnnzoo export``)."""
    folder = Path(directory)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported model folder: it has no config.json")
    config = json.loads(config_path.read_text())
    if "graphs" not in config:
        raise ValueError(
            f"{folder} is not an exported model folder; `rnnzoo export --ckpt {folder} --out DIR` writes one"
        )
    if config.get("format_version") != FORMAT_VERSION or config.get("task") not in PREDICTORS:
        raise ValueError(f"{config_path}: not an rnnzoo export this version reads (task {config.get('task')!r})")
    return PREDICTORS[config["task"]](folder, config, threads)
