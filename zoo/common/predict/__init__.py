"""One way to predict per task: items and typed options in, result records out. Each task's records,
options and function are its own module here (``zoo.common.predict.<task>``, named by its record
in ``zoo.common.tasks``); this module holds what they share and ``predict``, which picks the task's.

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

from dataclasses import fields

from zoo.common import tasks


class TooLarge(ValueError):
    """One request needs more work or a larger answer than a limit allows (the service's 413)."""


def check_count(name: str, value) -> None:
    """Refuse a count option that is not an integer >= 1 (``None``, the default, passes)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def options_for(task: str, **values):
    """The options of ``task`` (a ``zoo.common.tasks`` name) from keyword values, unknown names refused."""
    options = tasks.get(task).load("options")
    known = {field.name for field in fields(options)}
    unknown = sorted(set(values) - known)
    if unknown:
        takes = f"the options {', '.join(sorted(known))}" if known else "no options"
        raise ValueError(f"{task} takes {takes}, not {', '.join(unknown)}")
    return options(**values)


def predict(model, items: list, options=None, **limits) -> list[dict]:
    """``model``'s answer for each item, by its task (``model.task``, a ``zoo.common.tasks`` name); ``limits``
    go to the model's primitive (the exported predictors' ``budget`` of padded cells per call)."""
    task = tasks.get(model.task)
    options = task.load("options")() if options is None else options
    if not isinstance(options, task.load("options")):
        raise TypeError(f"a {task.name} model takes {task.load('options').__name__}, not {type(options).__name__}")
    return task.load("predict")(model, items, options, **limits)
