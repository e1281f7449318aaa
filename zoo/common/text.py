"""The text pipeline every entry point shares: raw text -> checked, truncated, padded ids, with numpy
and ``tokenizers`` only.

The datamodules' predict path, the tasks' ``classify``/``tag``/``translate``/``generate`` and the
onnxruntime predictors all call these functions, so the same input gives the same ids everywhere. How
far a text is truncated is a setting of its tokenizer (``Tokenizer.enable_truncation``, set by the
datamodule that fits it), and every checkpoint, pretrained folder and export carries the tokenizer.
"""

import itertools
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from zoo.common.formats import MAX_JSON_BYTES, folder_file

log = logging.getLogger("rnnzoo")

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
IGNORE_INDEX = -100  # a target that no loss or metric counts (torch's cross_entropy default)
MAX_WORD_CHARACTERS = 64  # characters of a word the tagger reads (the longest CoNLL-2003 word has 61)
SURROGATE = re.compile("[\ud800-\udfff]")


def read_tokenizer(folder: Path, file_name: str, listed: set[str] | None = None) -> Tokenizer:
    """A folder's tokenizer file (checked by ``zoo.common.formats.folder_file``) with its padding turned off:
    batches are padded by ``pad``, never by the tokenizer, and a file's own padding (``"Fixed": 20000000``)
    would make every text that long."""
    path = folder_file(folder, file_name, listed, MAX_JSON_BYTES)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises its own Exception type for missing or damaged files
        raise ValueError(f"{path}: cannot read the tokenizer ({err})") from None
    tokenizer.no_padding()
    return tokenizer


def check_texts(texts: list[str], what: str = "texts") -> list[str]:
    """``texts`` as a list, refused unless it is a non-empty list of strings that are Unicode text."""
    if isinstance(texts, str) or not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError(f"give a non-empty list of {what} (strings)")
    # JSON can carry "\udc80" and a Python str can hold it, but it is not Unicode text, and the
    # tokenizers fail on it with a TypeError.
    bad = [i for i, text in enumerate(texts) if not text.isascii() and SURROGATE.search(text)]
    if bad:
        raise ValueError(f"{what} {bad} contain a lone surrogate (not valid Unicode); send UTF-8 text")
    return list(texts)


def encode(tokenizer: Tokenizer, texts: list[str], what: str = "texts", end: str | None = None) -> list[list[int]]:
    """The ids of each text, truncated as the tokenizer says (with a warning), then ``end`` (a special
    token such as ``<eos>``) appended; a blank text, or one with no tokens, is refused."""
    texts = check_texts(texts, what)
    encodings = tokenizer.encode_batch(texts)
    empty = [
        i
        for i, (text, encoding) in enumerate(zip(texts, encodings, strict=True))
        if not text.strip() or not encoding.ids
    ]
    if empty:
        raise ValueError(f"{what} {empty} are empty (no tokens)")
    warn_truncated(tokenizer, [bool(encoding.overflowing) for encoding in encodings], what)
    suffix = [] if end is None else [special_id(tokenizer, end)]
    return [encoding.ids + suffix for encoding in encodings]


def warn_truncated(tokenizer: Tokenizer, truncated: list[bool], what: str) -> None:
    count = sum(truncated)
    if count:
        limit = (tokenizer.truncation or {}).get("max_length")
        log.warning(f"{count} of {len(truncated)} {what} exceed max_length={limit} tokens; truncated")


def prompt_ids(tokenizer: Tokenizer, prompt: str, previous: int | None = None) -> list[int]:
    """A language model's input for ``prompt``: the token before it, then its ids. The token before is
    ``previous`` (the last of a sequence's earlier text) or ``<eos>`` (the end of a previous sentence),
    so an empty prompt starts a new sentence."""
    check_texts([prompt], "prompt")
    return [special_id(tokenizer, EOS) if previous is None else previous, *tokenizer.encode(prompt).ids]


def continuation_text(tokenizer: Tokenizer, prompt: list[int], new: list[int]) -> str:
    """The prompt (without the token before it, ``prompt_ids``') and its continuation as text."""
    return tokenizer.decode(prompt[1:] + new, skip_special_tokens=False)


def pieces(tokenizer: Tokenizer, ids: list[int], new: Iterable[int]) -> Iterator[str]:
    """The text of ``ids`` and then of each id of ``new`` as it comes (a stream of the answer), as the
    pieces the decoded text grows by, so that they add up to ``tokenizer.decode(ids + new)``. A piece
    waits while the text does not extend what was sent (a byte-level token can end inside a character):
    the tokenizers rnnzoo trains decode a prefix of the ids to a prefix of the text."""
    ids, sent = list(ids), ""
    for token in itertools.chain([None], new):
        if token is not None:
            ids.append(token)
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        if len(decoded) > len(sent) and decoded.startswith(sent) and not decoded.endswith("\ufffd"):
            yield decoded[len(sent) :]
            sent = decoded
    if decoded != sent and decoded.startswith(sent):
        yield decoded[len(sent) :]


def split_words(sentences: list[str] | list[list[str]]) -> list[list[str]]:
    """Each sentence's words (a string is split on whitespace); empty sentences and words that are not
    one whitespace-free string are refused."""
    if isinstance(sentences, str) or not sentences:
        raise ValueError("give a non-empty list of sentences")
    sentences = [s.split() if isinstance(s, str) else list(s) for s in sentences]
    empty = [i for i, words in enumerate(sentences) if not words]
    if empty:
        raise ValueError(f"sentences {empty} are empty")
    if any(not isinstance(word, str) or len(word.split()) != 1 for words in sentences for word in words):
        raise ValueError("a word is not a string, contains whitespace or is empty")
    check_texts([" ".join(words) for words in sentences], "sentences")
    return sentences


# A character-aware language model reads a word as its UTF-8 bytes between two markers (zoo.networks.char_cnn).
WORD_PAD, WORD_BEGIN, WORD_END = 0, 1, 2
BYTE_VOCAB_SIZE = 256 + 3  # the bytes, shifted past the three markers


def word_bytes(words: list[str], width: int) -> np.ndarray:
    """``(len(words), width)`` ids: each word's bytes between the begin and end markers, right-padded;
    a longer word keeps its first ``width - 2`` bytes."""
    table = np.full((len(words), width), WORD_PAD, dtype=np.int64)
    for row, word in enumerate(words):
        ids = [WORD_BEGIN, *(byte + 3 for byte in word.encode()[: width - 2]), WORD_END]
        table[row, : len(ids)] = ids
    return table


def encode_words(
    tokenizer: Tokenizer, char_tokenizer: Tokenizer | None, sentences: list[list[str]]
) -> list[tuple[list[int], list[list[int]]]]:
    """Word ids and, with ``char_tokenizer``, each word's character ids (a word over
    ``MAX_WORD_CHARACTERS`` keeps its first and last characters: the character BiLSTM reads a word from
    both ends, prefixes and suffixes) of pre-split sentences."""
    encoded = tokenizer.encode_batch(sentences, is_pretokenized=True)
    words = [word for sentence in sentences for word in sentence]
    half = MAX_WORD_CHARACTERS // 2
    chars = [
        ids if len(ids) <= MAX_WORD_CHARACTERS else ids[:half] + ids[-half:]
        for ids in (e.ids for e in char_tokenizer.encode_batch(words))
    ] if char_tokenizer is not None else [[]] * len(words)  # fmt: skip
    result, start = [], 0
    for sentence, encoding in zip(sentences, encoded, strict=True):
        if len(encoding.ids) != len(sentence):
            raise ValueError(f"the tokenizer split a word of {sentence} into several tokens")
        result.append((encoding.ids, chars[start : start + len(sentence)]))
        start += len(sentence)
    return result


def special_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {token} token")
    return token_id


def pad_id(tokenizer: Tokenizer) -> int:
    """The tokenizer's ``<pad>`` id, or 0 for one without (the language model's)."""
    token_id = tokenizer.token_to_id(PAD)
    return 0 if token_id is None else token_id


def pad(rows: list[list[int]], value: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids ``(B, T)`` (int64) and the lengths ``(B,)``.

    The rows are padded here rather than by ``Tokenizer.enable_padding`` because they are not always
    one tokenizer's output: ``<eos>`` appended, targets padded with ``IGNORE_INDEX``, words' characters."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    padded = np.full((len(rows), int(lengths.max(initial=0))), value, dtype=np.int64)
    for row, ids in enumerate(rows):
        padded[row, : len(ids)] = ids
    return padded, lengths


def pad_words(sentences: list[list[list[int]]], time: int) -> tuple[np.ndarray, np.ndarray]:
    """Character ids ``(B, time, W)`` of each sentence's words and their lengths ``(B, time)``."""
    width = max((len(word) for words in sentences for word in words), default=1)
    chars = np.zeros((len(sentences), time, max(width, 1)), dtype=np.int64)
    lengths = np.zeros((len(sentences), time), dtype=np.int64)
    for row, words in enumerate(sentences):
        for col, ids in enumerate(words):
            chars[row, col, : len(ids)] = ids
            lengths[row, col] = len(ids)
    return chars, lengths


def labelled(texts: list[str], probabilities: np.ndarray, labels: list[str]) -> list[dict]:
    """What a classifier answers for each text at every entry point: ``{"text", "label", "probability",
    "probabilities"}``, the last giving every label's probability."""
    best = probabilities.argmax(-1)
    return [
        {
            "text": t,
            "label": labels[i],
            "probability": round(float(p[i]), 4),
            "probabilities": {label: round(float(value), 4) for label, value in zip(labels, p, strict=True)},
        }
        for t, i, p in zip(texts, best, probabilities, strict=True)
    ]


def vocabulary_difference(theirs: dict[str, str], ours: dict[str, str]) -> str | None:
    """Which tokenizer two sets of tokenizer JSONs (by name) share with different vocabularies
    (token -> id), with both sizes; None when all they share are the same."""
    for name in sorted(theirs.keys() & ours.keys()):
        a, b = Tokenizer.from_str(theirs[name]).get_vocab(), Tokenizer.from_str(ours[name]).get_vocab()
        if a != b:
            return f"another {name} vocabulary ({len(a)} tokens, not {len(b)})"
    return None
