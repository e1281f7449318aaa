"""One way to predict per task: items and typed options in, result records out.

Every entry point calls the task's function here: the PyTorch tasks (``task.predict``), the
onnxruntime predictors (``deploy.load(folder).predict``), the HTTP service, ``rnnzoo zoo predict``,
``rnnzoo translate`` and ``rnnzoo generate``. So an option has one default, resolved in one place
(the options class, then the model's own settings), and an answer has one shape wherever it comes
from (the records below, which are plain dicts and so JSON as they are).

A function sees the model only through a few primitives, which the PyTorch task and the exported
folder each implement under the same names: ``labels``, ``decoding`` (a ``zoo.common.formats.DecodingSpec``),
``get_tokenizer(name)``, and per task ``logits(texts)`` (classifier), ``tag_ids(sentences)``
(tagger), ``translate_ids(sources, beam_size, max_new_tokens)``, ``require_attention()`` and
``attention_weights(sources, targets)`` (translator, on source ids ending in ``<eos>``), and
``continue_ids(prompt_ids, options)`` (language model), ``columns``, ``input_length`` and
``forecast_values(windows)`` (forecaster, in the data's units). Torch-free.
"""

from dataclasses import dataclass, fields
from typing import NotRequired, TypedDict

import numpy as np

from zoo.common import decoding, tasks, text

# -- result records --------------------------------------------------------------------------------------------


class Classification(TypedDict):
    text: str
    label: str  # the most probable label
    probability: float  # its probability (4 decimals)
    probabilities: dict[str, float]  # every label's


class Tagging(TypedDict):
    words: list[str]  # the sentence's words, split on whitespace
    tags: list[str]  # one per word


class Translation(TypedDict):
    source: str
    translation: str
    # With ``TranslationOptions(attention=True)``: the tokens on both sides and the decoder's
    # attention, a row per target token (and one for the ``<eos>`` step) over the source tokens.
    source_tokens: NotRequired[list[str]]
    target_tokens: NotRequired[list[str]]
    attention: NotRequired[list[list[float]]]


class Continuation(TypedDict):
    prompt: str
    continuation: str  # the prompt followed by the generated text


class Forecast(TypedDict):
    columns: list[str]  # the series' columns, in the order of each row
    forecast: list[list[float]]  # the next ``horizon`` rows, in the data's units (4 decimals)


class TooLarge(ValueError):
    """One request needs more work or a larger answer than a limit allows (the service's 413)."""


# -- options ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassificationOptions:
    pass


@dataclass(frozen=True)
class TaggingOptions:
    pass


# Source tokens x beams a translation call decodes at most (every beam reads its own copy of the
# encoder's memory); one text over it is refused (``TooLarge``).
TOKEN_BEAMS = 8192


@dataclass(frozen=True)
class TranslationOptions:
    beam_size: int | None = None  # 1 is greedy; None: the model's (``decoding.beam_size``), else 5
    max_new_tokens: int | None = None  # target tokens; None: the model's, else 2 x the longest source + 10
    attention: bool = False  # add the tokens and the attention weights to each record

    def __post_init__(self):
        for name in ("beam_size", "max_new_tokens"):
            check_count(name, getattr(self, name))


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = decoding.MAX_NEW_TOKENS  # stop after this many tokens (or at ``<eos>``)
    temperature: float = decoding.TEMPERATURE  # 0 is greedy
    top_k: int | None = None  # sample among the k most likely tokens
    seed: int | None = None  # the same seed gives the same text

    def __post_init__(self):
        check_count("max_new_tokens", self.max_new_tokens)
        decoding.check_sampling(self.temperature, self.top_k)


@dataclass(frozen=True)
class ForecastOptions:
    pass


def check_count(name: str, value) -> None:
    """Refuse a count option that is not an integer >= 1 (``None``, the default, passes)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


Options = ClassificationOptions | TaggingOptions | TranslationOptions | GenerationOptions | ForecastOptions


def options_for(task: str, **values) -> Options:
    """The options of ``task`` (a ``zoo.common.tasks`` name) from keyword values, unknown names refused."""
    options = tasks.get(task).load("options")
    known = {field.name for field in fields(options)}
    unknown = sorted(set(values) - known)
    if unknown:
        takes = f"the options {', '.join(sorted(known))}" if known else "no options"
        raise ValueError(f"{task} takes {takes}, not {', '.join(unknown)}")
    return options(**values)


def predict(model, items: list, options: Options | None = None, **limits) -> list[dict]:
    """``model``'s answer for each item, by its task (``model.task``, a ``zoo.common.tasks`` name); ``limits``
    go to the model's primitive (the exported predictors' ``budget`` of padded cells per call)."""
    task = tasks.get(model.task)
    options = task.load("options")() if options is None else options
    if not isinstance(options, task.load("options")):
        raise TypeError(f"a {task.name} model takes {task.load('options').__name__}, not {type(options).__name__}")
    return task.load("predict")(model, items, options, **limits)


# -- the tasks -------------------------------------------------------------------------------------------------


def classify(model, texts: list[str], options: ClassificationOptions, **limits) -> list[Classification]:
    texts = text.check_texts(texts)
    return text.labelled(texts, decoding.softmax(model.logits(texts, **limits)), model.labels)


def tag(model, sentences: list[str] | list[list[str]], options: TaggingOptions, **limits) -> list[Tagging]:
    """A sentence is a string (its words split on whitespace) or its list of words."""
    sentences = text.split_words(sentences)
    labels = model.labels
    return [
        {"words": words, "tags": [labels[t] for t in ids]}
        for words, ids in zip(sentences, model.tag_ids(sentences, **limits), strict=True)
    ]


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


def forecast(model, series: list, options: ForecastOptions, **limits) -> list[Forecast]:
    """Each window (``input_length`` rows of one number per column, the data's units) -> the next rows."""
    windows = check_windows(series, model.input_length, model.columns)
    values = model.forecast_values(windows, **limits)
    overflowed = [i for i, forecast in enumerate(values) if not np.isfinite(forecast).all()]
    if overflowed:  # float32 inputs near its limit can overflow inside the network: no number to answer
        raise ValueError(f"windows {overflowed} have forecasts beyond float32 (their values are too large)")
    return [{"columns": model.columns, "forecast": np.round(v.astype(np.float64), 4).tolist()} for v in values]


def check_windows(series: list, input_length: int, columns: list[str]) -> np.ndarray:
    """``(B, L, C)`` float32 of the windows, or a ``ValueError`` that says which window is wrong and why."""
    if isinstance(series, str | bytes | np.ndarray) or not isinstance(series, list | tuple) or not series:
        raise ValueError("give a list of windows, each a list of rows of numbers")
    expected = (input_length, len(columns))
    windows = []
    for i, window in enumerate(series):
        try:
            values = np.asarray(window, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"window {i} is not a table of numbers (rows of the same length)") from None
        if values.shape != expected:
            raise ValueError(
                f"window {i} has shape {list(values.shape)}; this model reads {input_length} rows of "
                f"{len(columns)} values ({', '.join(columns)})"
            )
        if not np.isfinite(values).all() or not (np.abs(values) < np.finfo(np.float32).max).all():
            raise ValueError(f"window {i} has values that are NaN, infinite or beyond float32")
        windows.append(values)
    return np.stack(windows).astype(np.float32)
