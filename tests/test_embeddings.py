"""Pretrained word vectors aligned to a vocabulary (``zoo.networks.embeddings``), on tiny files written here."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.networks.embeddings import EmbeddingFileError, read_aligned_embeddings

VOCABULARY = {"<pad>": 0, "<unk>": 1, "the": 2, "cat": 3, "sat": 4}
GLOVE = "cat 0.5 -1 2\nthe 1 2 3\ndog 9 9 9\nsat 0.25 0 -0.5\n"  # out of vocabulary order, with a word not needed


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_each_vector_lands_on_its_token_id_and_tokens_without_one_get_zeros(tmp_path):
    aligned = read_aligned_embeddings(write(tmp_path / "glove.txt", GLOVE), VOCABULARY)
    expected = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 2, 3], [0.5, -1, 2], [0.25, 0, -0.5]])
    assert aligned.weights.dtype == torch.float32
    assert torch.equal(aligned.weights, expected)
    assert aligned.found.tolist() == [False, False, True, True, True]
    assert aligned.lowercase_matches == 0


def test_word2vec_header_line_is_skipped_and_fasttext_trailing_spaces_are_ignored(tmp_path):
    text = "3 3\n" + "".join(line + " \n" for line in GLOVE.splitlines()[:3])
    aligned = read_aligned_embeddings(write(tmp_path / "wiki.vec", text), VOCABULARY, dim=3)
    assert torch.equal(aligned.weights[[2, 3]], torch.tensor([[1.0, 2, 3], [0.5, -1, 2]]))
    assert aligned.found.tolist() == [False, False, True, True, False]


def test_gzipped_text_is_read_like_plain_text(tmp_path):
    plain = read_aligned_embeddings(write(tmp_path / "glove.txt", GLOVE), VOCABULARY)
    zipped = read_aligned_embeddings(write(tmp_path / "glove.txt.gz", gzip.compress(GLOVE.encode())), VOCABULARY)
    assert torch.equal(zipped.weights, plain.weights) and torch.equal(zipped.found, plain.found)


def test_npy_matrix_takes_its_tokens_from_the_sibling_vocab_file(tmp_path):
    matrix = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float64)
    np.save(tmp_path / "vectors.npy", matrix)
    write(tmp_path / "vectors.vocab", "sat\ndog\nthe\n")
    aligned = read_aligned_embeddings(tmp_path / "vectors.npy", VOCABULARY, dim=2)
    assert torch.equal(aligned.weights, torch.tensor([[0.0, 0], [0, 0], [5, 6], [0, 0], [1, 2]]))
    assert aligned.weights.dtype == torch.float32


def test_lowercase_fallback_is_counted_and_an_exact_match_is_preferred(tmp_path):
    vocabulary = {"Paris": 0, "Berlin": 1, "rome": 2}
    text = "paris 1 1\nberlin 2 2\nBerlin 3 3\nRome 4 4\n"
    aligned = read_aligned_embeddings(write(tmp_path / "cities.txt", text), vocabulary)
    # Paris through "paris"; Berlin exactly, though "berlin" comes first; the fallback only lowercases, so
    # "rome" does not take "Rome"
    assert torch.equal(aligned.weights, torch.tensor([[1.0, 1], [3, 3], [0, 0]]))
    assert aligned.lowercase_matches == 1


@pytest.mark.parametrize("kind", ["text", "npy"])
def test_a_token_listed_twice_takes_its_first_vector(tmp_path, kind):
    if kind == "text":
        path = write(tmp_path / "twice.txt", "cat 1 1\nthe 2 2\ncat 3 3\n")
    else:
        path = tmp_path / "twice.npy"
        np.save(path, np.array([[1.0, 1], [2, 2], [3, 3]]))
        write(tmp_path / "twice.vocab", "cat\nthe\ncat\n")
    assert read_aligned_embeddings(path, VOCABULARY).weights[3].tolist() == [1, 1]


def test_coverage_and_summary_count_the_found_and_lowercase_tokens(tmp_path):
    vocabulary = {f"w{i}": i for i in range(1000)} | {"Apple": 1000, "Pear": 1001}
    text = "".join(f"w{i} {i} 0\n" for i in range(0, 1000, 2)) + "apple 1 1\npear 2 2\n"
    path = write(tmp_path / "fruit.txt", text)
    aligned = read_aligned_embeddings(path, vocabulary)
    assert aligned.coverage == pytest.approx(502 / 1002)
    assert aligned.summary(path) == "embeddings fruit.txt: 502 of 1,002 tokens (50.1%, 2 by lowercase)"


def test_glove_tokens_containing_spaces_keep_them(tmp_path):
    # glove.840B.300d.txt has a few of these, e.g. "at name@domain.com"
    path = write(tmp_path / "glove.txt", "the 1 2\nat name@domain.com 3 4\ncat 5 6\n")
    aligned = read_aligned_embeddings(path, {"at name@domain.com": 0, "cat": 1})
    assert torch.equal(aligned.weights, torch.tensor([[3.0, 4], [5, 6]]))


@pytest.mark.parametrize(
    "content, match",
    [
        ("the 1 2 3\ncat 1 2\n", r"bad\.txt:2: the vector of 'cat' has 2 numbers, expected 3 as the first vector has"),
        ("2 3\nthe 1 2 3\ncat 1 2 3 4\n", r"bad\.txt:3: .* has 4 numbers, expected 3 as the header line says"),
        ("the 1 2 3\ncat 1 two 3\n", r"bad\.txt:2: the vector of 'cat' holds 'two', which is not a finite number"),
        ("the 1 2 nan\n", r"bad\.txt:1: the vector of 'the' holds 'nan', which is not a finite number"),
        ("the 1 2\ncaf\xe9 1 2\n".encode("latin-1"), r"bad\.txt:2: this line is not UTF-8 text"),
        ("", r"bad\.txt has no vectors \(it is empty\)"),
        ("0 300\n", r"bad\.txt has no vectors \(it is empty apart from its header line\)"),
        ("dog 1 2\nbird 3 4\n", r"none of the 5 vocabulary tokens has a vector in .*bad\.txt"),
    ],
)
def test_a_broken_text_file_names_its_problem_and_line(tmp_path, content, match):
    with pytest.raises(EmbeddingFileError, match=match):
        read_aligned_embeddings(write(tmp_path / "bad.txt", content), VOCABULARY)


def test_a_dimension_other_than_the_models_says_which_embedding_dim_to_set(tmp_path):
    with pytest.raises(EmbeddingFileError, match="has 3-dimensional vectors, the model's embedding_dim is 100: set "):
        read_aligned_embeddings(write(tmp_path / "glove.txt", GLOVE), VOCABULARY, dim=100)
    with pytest.raises(EmbeddingFileError, match="has 300-dimensional .* set embedding_dim to 300"):
        read_aligned_embeddings(write(tmp_path / "big.vec", "2 300\n"), VOCABULARY, dim=100)  # from the header


def test_a_missing_file_or_an_npy_without_matching_tokens_is_refused(tmp_path):
    with pytest.raises(EmbeddingFileError, match=r"missing\.txt does not exist: give the path of"):
        read_aligned_embeddings(tmp_path / "missing.txt", VOCABULARY)
    np.save(tmp_path / "vectors.npy", np.ones((3, 2)))
    with pytest.raises(EmbeddingFileError, match=r"has no token file .*vectors\.vocab"):
        read_aligned_embeddings(tmp_path / "vectors.npy", VOCABULARY)
    write(tmp_path / "vectors.vocab", "the\ncat\n")
    with pytest.raises(EmbeddingFileError, match=r"has 3 rows but .*vectors\.vocab lists 2 tokens"):
        read_aligned_embeddings(tmp_path / "vectors.npy", VOCABULARY)


class Planted:
    """Unpickling it would create the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_an_npy_object_array_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    array = np.empty((1, 2), dtype=object)
    array[0, 0], array[0, 1] = Planted(marker), 1.0
    np.save(tmp_path / "vectors.npy", array, allow_pickle=True)
    write(tmp_path / "vectors.vocab", "the\n")
    with pytest.raises(EmbeddingFileError, match=r"not a \.npy matrix of numbers"):
        read_aligned_embeddings(tmp_path / "vectors.npy", VOCABULARY)
    assert not marker.exists()
    np.load(tmp_path / "vectors.npy", allow_pickle=True)  # the test's bite: unpickling would have made it
    assert marker.exists()


def test_a_huge_line_in_a_small_gzip_is_refused_as_it_is_read_and_quoted_briefly(tmp_path):
    """One 8 MB line compresses to a few KB: it is refused after reading 1 MB of it, and the message
    quotes its first characters only."""
    path = tmp_path / "vectors.txt.gz"
    path.write_bytes(gzip.compress(b"the 1 2 3\n" + b"a" * 8_000_000 + b" 1 2 3\n"))
    assert path.stat().st_size < 50_000
    with pytest.raises(
        EmbeddingFileError, match=r"vectors\.txt\.gz:2: this line is longer than 1,048,576 bytes"
    ) as err:
        read_aligned_embeddings(path, VOCABULARY)
    assert len(str(err.value)) < 300
    long_token = "x" * 5000 + " 1 2\n"
    with pytest.raises(
        EmbeddingFileError, match=r"the vector of 'xxxx.*\.\.\. \(5,000 characters\) has 2 numbers"
    ) as err:
        read_aligned_embeddings(write(tmp_path / "long.txt", "the 1 2 3\n" + long_token), VOCABULARY)
    assert len(str(err.value)) < 300
