"""Predictors for exported folders: onnxruntime, numpy and ``tokenizers`` only, never torch.

``load(folder)`` reads the folder's ``config.json`` and returns the predictor of its task with the
same tokenization and post-processing as training. Sessions are tuned for throughput: every graph
optimization, and ``threads`` intra-op threads (default: onnxruntime's choice, one per core); one
thread per session is best when many processes or requests run side by side.
"""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

FORMAT_VERSION = 1


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Predictor:
    """What every task's predictor shares: its config, tokenizers and ONNX sessions."""

    def __init__(self, folder: Path, config: dict, threads: int | None = None):
        self.folder, self.config = folder, config
        self.tokenizers = {name: Tokenizer.from_file(str(folder / file)) for name, file in config["tokenizers"].items()}
        self.sessions = {name: make_session(folder / name, threads) for name in config["graphs"]}
        self.special_tokens = config["special_tokens"]

    @property
    def task(self) -> str:
        return self.config["task"]

    def encode(self, texts: list[str], tokenizer: str = "tokenizer") -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids ``(B, T)`` and lengths ``(B,)``; an empty text is refused."""
        if isinstance(texts, str) or not texts:
            raise ValueError("give a non-empty list of texts")
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
    def logits(self, texts: list[str]) -> np.ndarray:
        ids, lengths = self.encode(texts)
        return self.sessions["model.onnx"].run(["logits"], {"tokens": ids, "lengths": lengths})[0]

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
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        tokenizer = self.tokenizers["tokenizer"]
        eos_id = self.special_tokens["tokenizer"]["<eos>"]
        prompt_ids = [eos_id] + tokenizer.encode(prompt).ids
        rng = np.random.default_rng(seed)
        logits, state = self.step(np.array([prompt_ids]), self.zero_state(1))
        new_ids = []
        for _ in range(max_tokens):
            token = sample(logits[0, -1], temperature, top_k, rng)
            if token == eos_id:
                break
            new_ids.append(token)
            logits, state = self.step(np.array([[token]]), state)
        return tokenizer.decode(prompt_ids[1:] + new_ids, skip_special_tokens=False)


class TaggerPredictor(Predictor):
    def tag(self, sentences: list[str] | list[list[str]]) -> list[dict]:
        """``[{"words", "tags"}]`` per sentence; a sentence is a string (split on whitespace) or its words."""
        sentences, feed = self.features(sentences)
        tags = self.sessions["model.onnx"].run(["tags"], feed)[0]
        labels = self.config["labels"]
        return [
            {"words": words, "tags": [labels[t] for t in tags[row, : len(words)]]}
            for row, words in enumerate(sentences)
        ]

    def features(self, sentences: list[str] | list[list[str]]) -> tuple[list[list[str]], dict[str, np.ndarray]]:
        """The sentences' words and the graph's inputs: padded word ids, lengths (and characters)."""
        if isinstance(sentences, str) or not sentences:
            raise ValueError("give a non-empty list of sentences")
        sentences = [s.split() if isinstance(s, str) else list(s) for s in sentences]
        empty = [i for i, words in enumerate(sentences) if not words]
        if empty:
            raise ValueError(f"sentences {empty} are empty")
        if any(len(word.split()) != 1 for words in sentences for word in words):
            raise ValueError("a word contains whitespace (or is empty)")
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
        char_ids = [e.ids for e in self.tokenizers["char_tokenizer"].encode_batch(words)]
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

    def translate(self, texts: list[str], beam_size: int | None = None, max_length: int | None = None) -> list[str]:
        """Translate raw sentences; ``beam_size`` 1 is greedy (default: the model's)."""
        if beam_size is None:
            beam_size = self.config["decoding"].get("beam_size", 5)
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        source, lengths = self.encode_sources(texts)
        max_length = max_length or self.config["decoding"].get("max_decode_length") or 2 * int(lengths.max()) + 10
        memory, state = self.encode(source, lengths)
        if beam_size == 1:
            ids = self.greedy(memory, state, len(texts), max_length)
        else:
            ids = self.beam_search(memory, state, len(texts), beam_size, max_length)
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
    logits = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < logits.size:
        logits = np.where(logits < np.sort(logits)[-top_k], -np.inf, logits)
    return int(rng.choice(logits.size, p=softmax(logits)))


PREDICTORS: dict[str, type[Predictor]] = {
    "language_model": LanguageModelPredictor,
    "classification": ClassifierPredictor,
    "translation": TranslatorPredictor,
    "tagging": TaggerPredictor,
}


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
