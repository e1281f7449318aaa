"""Language modelling's records and options, and its predict: prompts continued."""

from dataclasses import dataclass
from typing import TypedDict

from zoo.common import decoding, text
from zoo.common.predict import check_count


class Continuation(TypedDict):
    prompt: str
    continuation: str  # the prompt followed by the generated text


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = decoding.MAX_NEW_TOKENS  # stop after this many tokens (or at ``<eos>``)
    temperature: float = decoding.TEMPERATURE  # 0 is greedy
    top_k: int | None = None  # sample among the k most likely tokens
    seed: int | None = None  # the same seed gives the same text

    def __post_init__(self):
        check_count("max_new_tokens", self.max_new_tokens)
        decoding.check_sampling(self.temperature, self.top_k)


def generate(model, prompts: list[str], options: GenerationOptions) -> list[Continuation]:
    """Continue each prompt (an empty one starts a new sentence) until ``<eos>`` or ``max_new_tokens``."""
    if isinstance(prompts, str) or not all(isinstance(prompt, str) for prompt in prompts):
        raise ValueError("give a list of prompts (strings, which may be empty)")
    tokenizer = model.get_tokenizer("tokenizer")
    records = []
    for prompt in prompts:
        prompt_ids = text.prompt_ids(tokenizer, prompt)
        new = model.continue_ids(prompt_ids, options)
        records.append({"prompt": prompt, "continuation": text.continuation_text(tokenizer, prompt_ids, new)})
    return records
