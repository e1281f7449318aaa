"""Tagging's records and options, and its predict: a tag per word of raw sentences."""

from dataclasses import dataclass
from typing import TypedDict

from zoo.common import text


class Tagging(TypedDict):
    words: list[str]  # the sentence's words, split on whitespace
    tags: list[str]  # one per word


@dataclass(frozen=True)
class TaggingOptions:
    pass


# Source tokens x beams a translation call decodes at most (every beam reads its own copy of the
# encoder's memory); one text over it is refused (``TooLarge``).


def tag(model, sentences: list[str] | list[list[str]], options: TaggingOptions, **limits) -> list[Tagging]:
    """A sentence is a string (its words split on whitespace) or its list of words."""
    sentences = text.split_words(sentences)
    labels = model.labels
    return [
        {"words": words, "tags": [labels[t] for t in ids]}
        for words, ids in zip(sentences, model.tag_ids(sentences, **limits), strict=True)
    ]
