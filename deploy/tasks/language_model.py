"""Language modelling served without torch: the predictor (generation, streams and sequences kept
between requests), the ``/v1`` request and the v2 tensors."""

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import AliasChoices, BaseModel, Field

from deploy import signatures as names
from deploy.open_inference import Output, Tensors, values_of
from deploy.runtime import Predictor, check_cancelled
from deploy.serving import TaskAPI
from zoo.common import decoding, text
from zoo.common.predict import options_for
from zoo.common.predict.language_model import GenerationOptions


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
        ``zoo.common.predict.language_model.Continuation`` (this ``prompt`` and its continuation) and what to
        carry into the sequence's next request: the state after ``prompt``, not after the continuation, so the next
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
        """``prompt`` and its continuation (``zoo.common.predict.language_model.generate``), to ``<eos>`` or
        ``max_new_tokens``."""
        options = GenerationOptions(max_new_tokens, temperature, top_k, seed)
        (record,) = self.predict([prompt], options)
        return record["continuation"]


class GenerateRequest(BaseModel):
    # Defaults are ``zoo.common.predict.language_model.GenerationOptions``', as at every entry point.
    prompts: list[str] = Field(min_length=1, description="texts to continue (may be empty strings)")
    max_new_tokens: int | None = Field(
        None, ge=1, le=1000, validation_alias=AliasChoices("max_new_tokens", "max_tokens"),
        description=f"default {GenerationOptions.max_new_tokens} (``max_tokens``: its old name, still accepted)",
    )  # fmt: skip
    temperature: float | None = Field(
        None, ge=0.0, le=10.0, allow_inf_nan=False, description=f"default {GenerationOptions.temperature}; 0 is greedy"
    )
    top_k: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    stream: bool = Field(False, description="answer one prompt's continuation as server-sent events, a token each")


API = TaskAPI(
    GenerateRequest,
    "prompts",
    legacy_key="generations",
    legacy=lambda record: record["continuation"],
    allow_empty=True,
    stream=lambda predictor, params, _: lambda prompt: predictor.stream(prompt, options_for(predictor.task, **params)),
)
TENSORS = Tensors("text", "BYTES", {"continuation": Output("BYTES", values_of("continuation"))})
