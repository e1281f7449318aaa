"""Classification's records and options, and its predict: labels and probabilities of raw texts."""

from dataclasses import dataclass
from typing import TypedDict

from zoo.common import decoding, text


class Classification(TypedDict):
    text: str
    label: str  # the most probable label
    probability: float  # its probability (4 decimals)
    probabilities: dict[str, float]  # every label's


@dataclass(frozen=True)
class ClassificationOptions:
    pass


def classify(model, texts: list[str], options: ClassificationOptions, **limits) -> list[Classification]:
    texts = text.check_texts(texts)
    return text.labelled(texts, decoding.softmax(model.logits(texts, **limits)), model.labels)
