"""Decoding loops — greedy, beam search, sampling — in numpy, shared by PyTorch and onnxruntime.

A loop only sees a ``step`` function (token ids and a state -> numpy logits and the next state) and,
for beam search, a ``select`` function (a state -> the state of some of its rows); the network
behind them is a ``zoo`` module (``zoo.networks.seq2seq.translate_ids``, ``zoo.networks.language_model.generate``) or
an ONNX graph (``deploy.runtime``). One loop means one set of defaults and one result for a model
whichever way it runs.
"""

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

BEAM_SIZE = 5
LENGTH_PENALTY = 1.0  # hypotheses are ranked by log p / length ** LENGTH_PENALTY
MAX_NEW_TOKENS = 50  # a language model's continuation
TEMPERATURE = 1.0
PROMPT_CHUNK = 256  # prompt tokens per language-model call: its logits are (tokens, vocabulary)

State = Any  # whatever the step function carries: torch tensors, numpy arrays, a dict of them
Step = Callable[[np.ndarray, State], tuple[np.ndarray, State]]
Select = Callable[[State, np.ndarray], State]


def default_max_new_tokens(source_lengths) -> int:
    """A translation's generous budget: twice the longest source plus ten tokens."""
    return 2 * int(max(source_lengths)) + 10


def greedy(step: Step, state: State, batch: int, bos: int, eos: int, max_new_tokens: int) -> list[list[int]]:
    """The most likely token at every step; token lists without ``<bos>``/``<eos>``."""
    steps = list(greedy_steps(step, state, batch, bos, eos, max_new_tokens))
    return [row[: row.index(eos)] if eos in row else row for row in np.stack(steps, 1).tolist()]


def greedy_steps(step: Step, state: State, batch: int, bos: int, eos: int, max_new_tokens: int) -> Iterator[np.ndarray]:
    """Greedy decoding one step at a time: each step's tokens ``(batch,)``, ``eos`` once a row has ended,
    until every row has ended or ``max_new_tokens`` steps (a stream reads them as they come)."""
    tokens = np.full(batch, bos, dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    for _ in range(max_new_tokens):
        logits, state = step(tokens, state)
        tokens = np.where(done, eos, logits.argmax(-1))
        yield tokens
        done |= tokens == eos
        if done.all():
            break


def beam_search(
    step: Step,
    select: Select,
    state: State,
    batch: int,
    beam_size: int,
    bos: int,
    eos: int,
    max_new_tokens: int,
    length_penalty: float = LENGTH_PENALTY,
) -> list[list[int]]:
    """Batched beam search. ``state`` (and whatever ``step`` reads besides it, such as the encoder's
    memory) already holds ``batch * beam_size`` rows, sentence ``b``'s beams at ``b * beam_size + j``.

    Each step keeps the ``2 * beam_size`` best continuations of every sentence: those ending in
    ``<eos>`` among the first ``beam_size`` are finished, the best ``beam_size`` others go on. A
    sentence stops once it has ``beam_size`` finished hypotheses (or at ``max_new_tokens``); the best by
    ``log p / length ** length_penalty`` wins. ``beam_size`` 1 is greedy decoding.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    k = beam_size
    tokens = np.full(batch * k, bos, dtype=np.int64)
    scores = np.full((batch, k), -np.inf, dtype=np.float32)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    sequences = np.empty((batch * k, 0), dtype=np.int64)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)
    for length in range(1, max_new_tokens + 1):
        logits, state = step(tokens, state)
        vocab = logits.shape[-1]
        candidates = (log_softmax(logits).reshape(batch, k, vocab) + scores[..., None]).reshape(batch, -1)
        top_scores, top_index = top_k(candidates, min(2 * k, k * vocab))
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_eos = top_token == eos
        for b in np.flatnonzero(~done):
            for score, ends, beam in zip(top_scores[b, :k], is_eos[b, :k], top_beam[b, :k], strict=True):
                if ends and score > -np.inf:
                    finished[b].append((score / length**length_penalty, sequences[b * k + beam].tolist()))
            done[b] = len(finished[b]) >= k
        if done.all():
            break
        # The best k continuations that do not end go on.
        alive_scores, order = top_k(np.where(is_eos, -np.inf, top_scores).astype(np.float32), k)
        beam = np.take_along_axis(top_beam, order, 1)
        tokens = np.take_along_axis(top_token, order, 1).reshape(-1)
        origin = (np.arange(batch)[:, None] * k + beam).reshape(-1)
        scores = np.where(done[:, None], -np.inf, alive_scores).astype(np.float32)
        state = select(state, origin)
        sequences = np.concatenate([sequences[origin], tokens[:, None]], axis=1)
    for b in np.flatnonzero(~done):  # out of steps: the live beams compete with what has finished
        for j in range(k):
            if scores[b, j] > -np.inf:
                finished[b].append((scores[b, j] / sequences.shape[1] ** length_penalty, sequences[b * k + j].tolist()))
    return [max(hypotheses, key=lambda item: item[0])[1] for hypotheses in finished]


def beam_rows(batch: int, beam_size: int) -> np.ndarray:
    """The rows that give each sentence ``beam_size`` copies, for ``select`` before ``beam_search``."""
    return np.repeat(np.arange(batch), beam_size)


def check_sampling(temperature: float, top_k: int | None) -> None:
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


def sample(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> int:
    """One token id from ``logits`` ``(V,)``: the argmax at temperature 0, else drawn from the softmax
    of ``logits / temperature`` over the ``top_k`` best (all without ``top_k``)."""
    if temperature == 0:
        return int(logits.argmax())
    with np.errstate(over="ignore"):  # shifted first: a tiny temperature sends the others to -inf, not nan
        logits = (logits.astype(np.float64) - logits.max()) / temperature
    if top_k is not None and top_k < logits.size:
        logits = np.where(logits < np.sort(logits)[-top_k], -np.inf, logits)
    return int(rng.choice(logits.size, p=softmax(logits)))


def continue_ids(
    step: Step,
    state: State,
    prompt: list[int],
    eos: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_k: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """A language model's continuation of ``prompt`` (token ids, at least one): ``step`` takes ids
    ``(1, T)``. Stops at ``eos`` (not included) or after ``max_new_tokens``; ``seed`` fixes the draws."""
    check_sampling(temperature, top_k)
    if not prompt:
        raise ValueError("a continuation needs at least one prompt token (start from the end-of-sentence id)")
    logits, state = read(step, state, prompt)
    return list(sampled_ids(step, logits, state, eos, max_new_tokens, temperature, top_k, seed))


def read(step: Step, state: State, ids: list[int]) -> tuple[np.ndarray, State]:
    """The logits ``(1, T, V)`` of the last call and the state after reading ``ids`` (at least one), in
    calls of ``PROMPT_CHUNK`` tokens: the state carries over, so the result is that of one call."""
    for start in range(0, len(ids), PROMPT_CHUNK):
        logits, state = step(np.array([ids[start : start + PROMPT_CHUNK]], dtype=np.int64), state)
    return logits, state


def sampled_ids(
    step: Step,
    logits: np.ndarray,
    state: State,
    eos: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_k: int | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """The tokens drawn one by one from ``logits`` ``(1, T, V)`` (those after the last token read into
    ``state``) to ``eos`` (not included) or ``max_new_tokens``; a stream reads them as they come."""
    rng = np.random.default_rng(seed)
    for _ in range(max_new_tokens):
        token = sample(logits[0, -1], temperature, top_k, rng)
        if token == eos:
            break
        yield token
        logits, state = step(np.array([[token]], dtype=np.int64), state)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def log_mean_probabilities(logits: list[np.ndarray]) -> np.ndarray:
    """log of the mean over members of softmax(logits), along the last axis: an ensemble's next-token
    scores (``zoo.networks.ensemble.log_mean_probabilities`` in numpy)."""
    log_probabilities = np.stack([log_softmax(member.astype(np.float32)) for member in logits])
    peak = log_probabilities.max(0)  # a log-sum-exp over the members, shifted so that exp cannot overflow
    return peak + np.log(np.exp(log_probabilities - peak).sum(0)) - np.float32(math.log(len(logits)))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest values of each row, best first, and their indices (like ``torch.topk``)."""
    part = np.argpartition(-values, k - 1, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(values, part, -1), axis=-1, kind="stable")
    index = np.take_along_axis(part, order, -1)
    return np.take_along_axis(values, index, -1), index
