"""Pretrained word vectors (word2vec, GloVe, fastText) aligned to a tokenizer's vocabulary, with numpy and
torch only, so a model's ``nn.Embedding`` can start from them instead of from random rows.

Two formats are read: the text format the three projects share (a token and its numbers per line, an
optional word2vec header line ``<count> <dim>``, gzipped or not) and a ``.npy`` matrix whose tokens are in a
sibling ``.vocab`` file. Text files are streamed and only the vectors the vocabulary needs are kept, since
such files reach several GB; a vocabulary token without a vector gets a zero row, marked in ``found``.
"""

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_FORMATS = "a word2vec/GloVe/fastText text file (.txt, .vec, optionally gzipped) or a .npy matrix with a .vocab file"
_GZIP_MAGIC = b"\x1f\x8b"


class EmbeddingFileError(ValueError):
    """A pretrained embedding file that cannot be used; the message says what to do."""


@dataclass(frozen=True, eq=False)
class AlignedEmbeddings:
    """Pretrained vectors in vocabulary order, ready for ``nn.Embedding.from_pretrained`` or ``weight.copy_``."""

    weights: torch.Tensor  # (V, D) float32: row i is the vector of id i; ids without a vector get zeros
    found: torch.Tensor  # (V,) bool: which ids got a vector
    lowercase_matches: int  # ids found only through their lowercased token

    @property
    def coverage(self) -> float:
        """The fraction of the vocabulary that got a vector."""
        return self.found.float().mean().item()

    def summary(self, path: str | os.PathLike) -> str:
        """One log line, e.g. ``embeddings glove.txt: 9,120 of 10,000 tokens (91.2%, 312 by lowercase)``."""
        found, total = int(self.found.sum()), len(self.found)
        return (
            f"embeddings {Path(path).name}: {found:,} of {total:,} tokens "
            f"({self.coverage:.1%}, {self.lowercase_matches:,} by lowercase)"
        )


def read_aligned_embeddings(
    path: str | os.PathLike, vocabulary: dict[str, int], dim: int | None = None
) -> AlignedEmbeddings:
    """The vectors of ``path`` for ``vocabulary`` (token -> id, ids 0..V-1, as ``Tokenizer.get_vocab()``).

    A token takes the vector of the same token in the file, else that of its lowercased form; when the
    file lists a token twice, the first one counts. ``dim``, the model's embedding size, is checked
    against the file's before the file is read further.
    """
    if not vocabulary:
        raise ValueError("the vocabulary is empty")
    if sorted(vocabulary.values()) != list(range(len(vocabulary))):
        raise ValueError("the vocabulary's ids must be 0..V-1, each once")
    path = Path(path)
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise EmbeddingFileError(f"{path} {problem}: give the path of {_FORMATS}")
    if path.suffix == ".bin":
        raise EmbeddingFileError(
            f"{path} is a binary word2vec/fastText file, which is not read: use the text version (.vec/.txt), "
            "or convert it with gensim's KeyedVectors.load_word2vec_format(path, binary=True)"
            ".save_word2vec_format(out, binary=False)"
        )
    needed = set(vocabulary) | {token.lower() for token in vocabulary}
    read = _read_npy if path.suffix == ".npy" else _read_text
    vectors, size = read(path, needed, dim)
    return _align(path, vectors, size, vocabulary)


def _read_text(path: Path, needed: set[str], dim: int | None) -> tuple[dict[str, np.ndarray], int]:
    """The vectors of the ``needed`` tokens in a text file, and the file's dimension. Only the lines of
    needed tokens have their numbers parsed; every line has its count of numbers checked."""
    vectors: dict[str, np.ndarray] = {}
    size, size_from, count = 0, "", 0
    for number, line in _numbered_lines(path):
        fields = line.rstrip("\r\n ").split(" ")  # not split(): fastText tokens can hold other whitespace
        if fields == [""]:
            continue
        if number == 1 and len(fields) == 2 and all(field.isdecimal() for field in fields):
            size, size_from = int(fields[1]), "as the header line says"
            _check_dim(path, size, dim)
            continue
        if not size_from:
            if len(fields) == 1:
                raise EmbeddingFileError(
                    f"{path}:{number}: {quote(fields[0])} has no numbers after it: each line must be a token "
                    "followed by the numbers of its vector, separated by spaces"
                )
            size, size_from = len(fields) - 1, f"as the first vector has (line {number})"
            _check_dim(path, size, dim)
        token, values = _split_line(path, number, fields, size, size_from)
        count += 1
        if token in needed and token not in vectors:
            vectors[token] = _parse_vector(path, number, token, values)
    if not count:
        header = " apart from its header line" if size_from else ""
        raise EmbeddingFileError(f"{path} has no vectors (it is empty{header}): check that the download finished")
    return vectors, size


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The 1-based number and text of each line, gunzipped when the file is gzip (whatever its name).
    Lines are decoded one by one, so a decoding error names the right line."""
    with open(path, "rb") as file:
        zipped = file.read(2) == _GZIP_MAGIC
    number = 0
    try:
        with gzip.open(path, "rb") if zipped else open(path, "rb") as file:
            while raw := file.readline(MAX_LINE_BYTES + 1):  # bounded: a line is read up to the limit only
                number += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise EmbeddingFileError(
                        f"{path}:{number}: this line is longer than {MAX_LINE_BYTES:,} bytes (it starts "
                        f"{quote(raw.decode('utf-8', 'replace'))}), which no vector file's line is"
                    )
                yield number, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EmbeddingFileError(
            f"{path}:{number}: this line is not UTF-8 text: re-encode the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8), or convert a binary file to the text format"
        ) from None
    except (OSError, EOFError, zlib.error) as error:
        if not zipped:
            raise
        raise EmbeddingFileError(
            f"{path}:{number + 1}: the gzip file is damaged ({error}): download it again"
        ) from None


MAX_LINE_BYTES = 1 << 20  # a 300-d vector's line is about 3 KB


def quote(text: str, limit: int = 40) -> str:
    """``text`` for an error message: its repr, cut after ``limit`` characters."""
    return repr(text[:limit]) + (f"... ({len(text):,} characters)" if len(text) > limit else "")


def _split_line(path: Path, number: int, fields: list[str], size: int, size_from: str) -> tuple[str, list[str]]:
    """A line's token and its ``size`` numbers (as text)."""
    extra = len(fields) - 1 - size
    if extra > 0 and not _is_number(fields[extra]):
        # GloVe's 840B file has a few tokens that contain spaces ("at name@domain.com")
        return " ".join(fields[: extra + 1]), fields[extra + 1 :]
    if extra:
        raise EmbeddingFileError(
            f"{path}:{number}: the vector of {quote(fields[0])} has {len(fields) - 1} numbers, expected {size} "
            f"{size_from}: each line must be a token followed by {size} numbers separated by spaces"
        )
    return fields[0], fields[1:]


def _parse_vector(path: Path, number: int, token: str, values: list[str]) -> np.ndarray:
    with np.errstate(over="ignore"):  # a number too large for float32 becomes inf, refused below
        try:
            vector = np.array(values, dtype=np.float32)
        except ValueError:
            vector = None
        if vector is not None and np.isfinite(vector).all():
            return vector
        bad = next(value for value in values if not _is_number(value) or not np.isfinite(np.float32(value)))
    raise EmbeddingFileError(
        f"{path}:{number}: the vector of {quote(token)} holds {quote(bad)}, which is not a finite number: "
        "each line must be a token followed by numbers separated by spaces"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_npy(path: Path, needed: set[str], dim: int | None) -> tuple[dict[str, np.ndarray], int]:
    """The vectors of the ``needed`` tokens in a ``.npy`` matrix whose row tokens are in ``<stem>.vocab``."""
    vocab_path = path.with_suffix(".vocab")
    if not vocab_path.is_file():
        raise EmbeddingFileError(
            f"{path} has no token file {vocab_path}: write the token of each row there, one per line (line i = row i)"
        )
    try:
        # memory-mapped, so only the needed rows are read; allow_pickle=False, so a user's file is never unpickled
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise EmbeddingFileError(
            f"{path} is not a .npy matrix of numbers ({error}): save the vectors with "
            "numpy.save(path, vectors.astype('float32'))"
        ) from None
    if not isinstance(matrix, np.ndarray):  # np.load opens an .npz archive whatever its name
        matrix.close()
        raise EmbeddingFileError(f"{path} is an .npz archive: save the vectors with numpy.save, not numpy.savez")
    if matrix.ndim != 2 or matrix.dtype.kind not in "fiu":
        raise EmbeddingFileError(
            f"{path} holds a {matrix.dtype} array of shape {matrix.shape}, not a (tokens, dim) matrix of numbers: "
            "save the vectors with numpy.save(path, vectors.astype('float32'))"
        )
    tokens = _read_vocab(vocab_path)
    if len(tokens) != len(matrix):
        raise EmbeddingFileError(
            f"{path} has {len(matrix):,} rows but {vocab_path} lists {len(tokens):,} tokens: "
            "line i of the .vocab file must be the token of row i"
        )
    if not len(matrix):
        raise EmbeddingFileError(f"{path} has no vectors (it is empty): check that it was saved completely")
    size = matrix.shape[1]
    _check_dim(path, size, dim)
    rows: dict[str, int] = {}
    for row, token in enumerate(tokens):
        if token in needed and token not in rows:
            rows[token] = row
    vectors = np.asarray(matrix[sorted(rows.values())], dtype=np.float32)  # (found, D)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = sorted(rows.values())[int(np.argmin(finite))]
        raise EmbeddingFileError(f"{path}: row {row} ({quote(tokens[row])}) holds a value that is not a finite number")
    by_row = dict(zip(sorted(rows.values()), vectors, strict=True))
    return {token: by_row[row] for token, row in rows.items()}, size


def _read_vocab(path: Path) -> list[str]:
    """The tokens of a ``.vocab`` file; lines end at ``\\n`` only, since tokens may hold other line breaks."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise EmbeddingFileError(f"{path} is not UTF-8 text ({error}): re-encode it as UTF-8") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _check_dim(path: Path, size: int, dim: int | None) -> None:
    if dim is not None and size != dim:
        raise EmbeddingFileError(
            f"{path} has {size}-dimensional vectors, the model's embedding_dim is {dim}: set embedding_dim to {size}"
        )


def _align(path: Path, vectors: dict[str, np.ndarray], size: int, vocabulary: dict[str, int]) -> AlignedEmbeddings:
    """Each vocabulary id's vector: its token's, else its lowercased token's."""
    ids, rows, lowercase_matches = [], [], 0
    for token, index in vocabulary.items():
        if token in vectors:
            vector = vectors[token]
        elif token.lower() in vectors:
            vector = vectors[token.lower()]
            lowercase_matches += 1
        else:
            continue
        ids.append(index)
        rows.append(vector)
    if not ids:
        raise EmbeddingFileError(
            f"none of the {len(vocabulary):,} vocabulary tokens has a vector in {path}: check that the file is "
            "for the tokenizer's language, and that the tokenizer splits text into words (subword pieces such as "
            "BPE's are not in word-vector files)"
        )
    weights = torch.zeros(len(vocabulary), size)  # (V, D)
    found = torch.zeros(len(vocabulary), dtype=torch.bool)
    weights[ids] = torch.from_numpy(np.stack(rows))
    found[ids] = True
    return AlignedEmbeddings(weights, found, lowercase_matches)
