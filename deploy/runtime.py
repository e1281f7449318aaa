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
        state = self.config["state"]
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
