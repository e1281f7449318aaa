"""Translation served without torch: the predictor (greedy and beam search over the encoder and
decoder-step graphs), the ``/v1`` request and the v2 tensors."""

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from pydantic import AliasChoices, Field

from deploy import signatures as names
from deploy.open_inference import Output, Tensors, values_of
from deploy.runtime import Predictor, check_cancelled, sub_batches
from deploy.serving import Limits, TaskAPI, TextsRequest
from zoo.common import decoding, text
from zoo.common.formats import CONFIG_FILE, ExportConfig, FormatError
from zoo.common.predict import TooLarge, options_for
from zoo.common.predict.translation import TOKEN_BEAMS, TranslationOptions, target_budget


class TranslatorPredictor(Predictor):
    """Greedy and beam search (``zoo.common.decoding``) over the encoder graph and the decoder-step graph,
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
        """Next-word logits: one network's own, an ensemble's log mean probabilities (as ``zoo.networks.ensemble``)."""
        logits, state = self.run_decoders(names.LOGITS, tokens, state, memory)
        return (logits[0] if len(logits) == 1 else decoding.log_mean_probabilities(logits)), state

    def translate(
        self,
        texts: list[str],
        beam_size: int | None = None,
        max_new_tokens: int | None = None,
        budget: int = TOKEN_BEAMS,
        attention: bool = False,
    ) -> list[str] | list[dict]:
        """Translations of raw sentences; ``beam_size`` 1 is greedy (default: the model's). With
        ``attention``, the records of ``zoo.common.predict.translation.Translation`` with the tokens and weights."""
        records = self.predict(texts, TranslationOptions(beam_size, max_new_tokens, attention), budget=budget)
        return records if attention else [record["translation"] for record in records]

    def stream(
        self, source: str, max_new_tokens: int | None = None, budget: int = TOKEN_BEAMS
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
        self, sources: list[list[int]], beam_size: int, max_new_tokens: int, budget: int = TOKEN_BEAMS
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
        self, sources: list[list[int]], targets: list[list[int]], budget: int = TOKEN_BEAMS
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
        """Target ids of padded sources, as ``zoo.networks.seq2seq.translate_ids`` decodes them in PyTorch."""
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


class TranslateRequest(TextsRequest):
    beam_size: int | None = Field(None, ge=1, le=16, description="1 = greedy; default: the model's")
    max_new_tokens: int | None = Field(
        None, ge=1, le=512, description="target token budget (``max_length``: its old name, still accepted)",
        validation_alias=AliasChoices("max_new_tokens", "max_length"),
    )  # fmt: skip
    attention: bool = Field(
        False, description="return each translation as {translation, source_tokens, target_tokens, attention}"
    )
    stream: bool = Field(False, description="answer one text's greedy translation as server-sent events, a token each")


def stream_translation(predictor: Predictor, params: dict, limits: Limits) -> Callable[[str], Iterator[str]]:
    options = options_for(predictor.task, **params)
    if options.beam_size not in (None, 1) or options.attention:
        raise ValueError("a streamed translation is greedy and without attention: send beam_size 1 or none")
    return lambda source: predictor.stream(source, options.max_new_tokens, limits.max_beam_tokens)


API = TaskAPI(
    TranslateRequest,
    "texts",
    limits=lambda limits: {"budget": limits.max_beam_tokens, "attention_cells": limits.max_attention_cells},
    legacy_key="translations",  # the text alone, or with attention the record
    legacy=lambda record: record if "attention" in record else record["translation"],
    stream=stream_translation,
)
TENSORS = Tensors("text", "BYTES", {"translation": Output("BYTES", values_of("translation"))})
