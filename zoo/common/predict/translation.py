"""Translation's records and options, and its predict: greedy or beam translations, with attention weights if asked."""

from dataclasses import dataclass
from typing import NotRequired, TypedDict

import numpy as np

from zoo.common import decoding, text
from zoo.common.predict import TooLarge, check_count


class Translation(TypedDict):
    source: str
    translation: str
    # With ``TranslationOptions(attention=True)``: the tokens on both sides and the decoder's
    # attention, a row per target token (and one for the ``<eos>`` step) over the source tokens.
    source_tokens: NotRequired[list[str]]
    target_tokens: NotRequired[list[str]]
    attention: NotRequired[list[list[float]]]


TOKEN_BEAMS = 8192


@dataclass(frozen=True)
class TranslationOptions:
    beam_size: int | None = None  # 1 is greedy; None: the model's (``decoding.beam_size``), else 5
    max_new_tokens: int | None = None  # target tokens; None: the model's, else 2 x the longest source + 10
    attention: bool = False  # add the tokens and the attention weights to each record

    def __post_init__(self):
        for name in ("beam_size", "max_new_tokens"):
            check_count(name, getattr(self, name))


def translate(
    model, texts: list[str], options: TranslationOptions, attention_cells: int | None = None, **limits
) -> list[Translation]:
    """``attention_cells`` bounds the attention answer: target x source tokens over all texts."""
    settings = model.decoding
    beam_size = options.beam_size or settings.beam_size
    source_tokenizer = model.get_tokenizer("source_tokenizer")
    target_tokenizer = model.get_tokenizer("target_tokenizer")
    sources = text.encode(source_tokenizer, texts, end=text.EOS)
    max_new_tokens = target_budget(model, options, sources)
    if options.attention:
        model.require_attention()  # before the decoding, which may take a while
        check_attention_cells([len(source) for source in sources], attention_cells)  # a row each, at least
    targets = model.translate_ids(sources, beam_size, max_new_tokens, **limits)
    records = [
        {"source": source, "translation": translation}
        for source, translation in zip(texts, target_tokenizer.decode_batch(targets), strict=True)
    ]
    if not options.attention:
        return records
    rows = [len(target) + (len(target) < max_new_tokens) for target in targets]  # and the <eos> step's, if taken
    check_attention_cells([len(source) * n for source, n in zip(sources, rows, strict=True)], attention_cells)
    for record, source, target, weights in zip(
        records, sources, targets, model.attention_weights(sources, targets, **limits), strict=True
    ):
        target_tokens = [target_tokenizer.id_to_token(i) for i in target]
        target_tokens += [text.EOS] if len(target) < max_new_tokens else []  # else it ran out of tokens
        record["source_tokens"] = [source_tokenizer.id_to_token(i) for i in source]
        record["target_tokens"] = target_tokens
        record["attention"] = np.round(np.asarray(weights[: len(target_tokens)], dtype=np.float64), 4).tolist()
    return records


def target_budget(model, options: TranslationOptions, sources: list[list[int]]) -> int:
    """The target tokens a translation may have: the request's, else the model's, else twice the longest source's
    plus ten."""
    budget = options.max_new_tokens or model.decoding.max_new_tokens
    return budget or decoding.default_max_new_tokens(map(len, sources))


def check_attention_cells(cells: list[int], budget: int | None) -> None:
    """Refuse attention weights of more than ``budget`` cells (target x source tokens, per text)."""
    if budget is not None and sum(cells) > budget:
        raise TooLarge(
            f"the attention of these translations has {sum(cells)} cells (target x source tokens); at most "
            f"{budget} are returned per request: send fewer or shorter texts, or lower max_new_tokens"
        )
