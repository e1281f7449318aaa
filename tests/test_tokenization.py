"""The tokenizers every datamodule fits (``datamodules.tokenization``), on tiny texts written here."""

import pytest
import torch

from datamodules.loading import DataError
from datamodules.tokenization import (
    fit_bpe_tokenizer,
    fit_char_tokenizer,
    fit_reversible_tokenizer,
    fit_word_tokenizer,
    pretrained_tokenizers,
    text_normalizer,
)
from tests.conftest import pretrained_folder
from zoo import SequenceClassifier

# word counts: zebra 4, <unk> 5 (a literal one, as in PTB), mouse 3, cat 2, ant 1; alphabetical
# order differs from frequency order, so a vocabulary sorted by name would not pass
WORD_TEXTS = [
    "zebra <unk> mouse zebra",
    "<unk> cat zebra <unk>",
    "mouse <unk> zebra cat",
    "ant mouse <unk>",
]
SENTENCES = ["Hello, world! It's a test.", "A test, again: (hello) world?", "Don't stop -- it's fine."]


def vocabulary(tokenizer) -> list[str]:
    """The tokens by id; the ids must be 0..n-1 without a hole."""
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert [i for _, i in by_id] == list(range(len(by_id)))
    return [token for token, _ in by_id]


def test_word_tokenizer_puts_special_tokens_first_in_order_then_words_by_frequency():
    tokenizer = fit_word_tokenizer(WORD_TEXTS, ["<pad>", "<eos>", "<unk>"])
    # the literal <unk> is the most frequent "word", yet it keeps its special id 2 and only that one
    assert vocabulary(tokenizer) == ["<pad>", "<eos>", "<unk>", "zebra", "mouse", "cat", "ant"]
    assert tokenizer.encode("zebra <unk> ant").ids == [3, 2, 6]
    encoding = tokenizer.encode("the zebra ate a cat")  # words never seen become <unk>
    assert encoding.ids == [2, 3, 2, 2, 5] and encoding.tokens == ["<unk>", "zebra", "<unk>", "<unk>", "cat"]


def test_word_tokenizer_max_size_counts_the_special_tokens_and_min_frequency_drops_rare_words():
    capped = fit_word_tokenizer(WORD_TEXTS, ["<pad>", "<unk>"], max_size=4)
    assert vocabulary(capped) == ["<pad>", "<unk>", "zebra", "mouse"]  # the two most frequent words
    assert capped.encode("mouse cat").ids == [3, 1]  # cut words are unknown
    frequent = fit_word_tokenizer(WORD_TEXTS, ["<pad>", "<unk>"], min_frequency=3)
    assert vocabulary(frequent) == ["<pad>", "<unk>", "zebra", "mouse"]  # cat (2) and ant (1) are dropped
    assert frequent.encode("ant zebra").ids == [1, 2]


def test_word_tokenizer_applies_its_normalizer_before_splitting():
    normalizer = text_normalizer(lowercase=True, replacements={"<br />": " "})
    tokenizer = fit_word_tokenizer(["Zebra<br />zebra MOUSE", "mouse zebra"], ["<pad>", "<unk>"], normalizer=normalizer)
    assert vocabulary(tokenizer) == ["<pad>", "<unk>", "zebra", "mouse"]
    assert tokenizer.encode("ZEBRA<br />Mouse").ids == [2, 3]


def test_text_normalizer_replaces_then_lowercases():
    assert text_normalizer().normalize_str("Great<br />Film") == "Great<br />Film"  # nothing asked, nothing done
    assert text_normalizer(replacements={"<br />": " "}).normalize_str("Great<br />Film<br />") == "Great Film "
    assert text_normalizer(lowercase=True).normalize_str("Great FILM") == "great film"
    both = text_normalizer(lowercase=True, replacements={"<BR>": "\n", "&amp;": "&"})
    assert both.normalize_str("Tom &amp; Jerry<BR>Rock") == "tom & jerry\nrock"


def test_char_tokenizer_makes_every_character_a_token_and_decodes_back():
    tokenizer = fit_char_tokenizer(["ab ba", "cab!", "a a"], ["<pad>", "<unk>"])
    vocab = vocabulary(tokenizer)
    assert vocab[:2] == ["<pad>", "<unk>"] and sorted(vocab[2:]) == sorted(" !abc")
    assert vocab[2] == "a" and vocab[3] in (" ", "b")  # by frequency: a 6, space 3, b 3, c 1, ! 1
    text = "a cab! ba"
    encoding = tokenizer.encode(text)
    assert encoding.tokens == list(text)  # spaces included, nothing merged or dropped
    assert tokenizer.decode(encoding.ids) == text
    assert tokenizer.encode("az").ids == [tokenizer.token_to_id("a"), 1]  # an unseen character is <unk>


def test_bpe_tokenizer_learns_frequent_words_and_keeps_the_special_ids():
    texts = ["lower lowest newer newest low new"] * 10
    tokenizer = fit_bpe_tokenizer(texts, ["<pad>", "<unk>", "<eos>"], vocab_size=40, min_frequency=2)
    vocab = vocabulary(tokenizer)
    assert vocab[:3] == ["<pad>", "<unk>", "<eos>"] and len(vocab) <= 40
    assert tokenizer.encode("lowest").tokens == ["lowest</w>"]  # a frequent word became one token
    assert tokenizer.encode("slow").tokens != ["slow</w>"]  # an unseen word is spelled in pieces
    assert tokenizer.decode(tokenizer.encode("newer lower low").ids) == "newer lower low"
    assert tokenizer.encode("low Q").ids[-1] == 1  # an unseen character is <unk>
    lowered = fit_bpe_tokenizer(texts, ["<unk>"], normalizer=text_normalizer(lowercase=True), vocab_size=40)
    assert lowered.encode("LOWEST").tokens == ["lowest</w>"]


@pytest.mark.parametrize("kind", ["bpe", "word"])
def test_reversible_tokenizer_decodes_to_the_original_spacing(kind):
    special = ["<pad>", "<unk>", "<bos>", "<eos>"]
    tokenizer = fit_reversible_tokenizer(SENTENCES * 3, special, kind=kind, vocab_size=200, min_frequency=1)
    assert vocabulary(tokenizer)[:4] == special
    for sentence in SENTENCES:
        encoding = tokenizer.encode(sentence)
        assert "," not in encoding.tokens[0] and 1 not in encoding.ids  # punctuation split off, nothing unknown
        assert tokenizer.decode(encoding.ids) == sentence
    assert tokenizer.encode("world!").tokens == ["▁world", "!"]
    lowered = fit_reversible_tokenizer(SENTENCES, special, kind=kind, lowercase=True, min_frequency=1)
    assert lowered.decode(lowered.encode("Hello, World!").ids) == "hello, world!"


def test_reversible_word_tokenizer_respects_its_size_and_frequency_limits():
    special = ["<pad>", "<unk>"]
    # pieces: ' 3 times; , . - s ▁ ▁test ▁world twice; the other 16 once
    tokenizer = fit_reversible_tokenizer(SENTENCES, special, kind="word", vocab_size=5, min_frequency=1)
    assert len(vocabulary(tokenizer)) == 5 and vocabulary(tokenizer)[2] == "'"
    frequent = fit_reversible_tokenizer(SENTENCES, special, kind="word", min_frequency=2)
    assert vocabulary(frequent)[:3] == [*special, "'"]
    assert set(vocabulary(frequent)[3:]) == {",", ".", "-", "s", "▁", "▁test", "▁world"}
    assert frequent.encode("a test").tokens == ["<unk>", "▁test"]  # "▁a" was seen once: unknown now


def test_an_unknown_tokenizer_kind_is_refused():
    with pytest.raises(ValueError, match="tokenizer kind must be 'bpe' or 'word', got 'char'"):
        fit_reversible_tokenizer(SENTENCES, ["<unk>"], kind="char")


def test_pretrained_tokenizers_are_read_from_a_pretrained_folder(tmp_path):
    assert pretrained_tokenizers(None, ["tokenizer"]) == {}
    arguments = {"vocab_size": 23, "num_classes": 2, "embedding_dim": 4, "hidden_size": 4}
    torch.manual_seed(0)
    folder = pretrained_folder(tmp_path / "clf", SequenceClassifier(**arguments), arguments, {"labels": ["n", "p"]})
    found = pretrained_tokenizers(str(folder), ["tokenizer"])
    assert list(found) == ["tokenizer"] and found["tokenizer"].encode("w0 w19 zebra").ids == [3, 22, 1]
    with pytest.raises(DataError, match=r"has no source_tokenizer, target_tokenizer \(it has: tokenizer\)"):
        pretrained_tokenizers(str(folder), ["source_tokenizer", "target_tokenizer"])


@pytest.mark.parametrize(
    "fit",
    [fit_word_tokenizer, fit_char_tokenizer, fit_bpe_tokenizer, fit_reversible_tokenizer],
    ids=["word", "char", "bpe", "reversible"],
)
def test_a_streamed_text_adds_up_to_the_decoded_text(fit):
    """A stream sends the text a piece per token (``zoo.common.text.pieces``): with every kind of tokenizer
    rnnzoo trains, the pieces put together are the whole decoded text, one piece at most per token."""
    from zoo.common.text import pieces

    corpus = ["the cat sat on the mat .", "a dog , the dogs ; unbelievable cats sat", "naïve café über"] * 20
    tokenizer = fit(corpus, ["<pad>", "<eos>"])
    prompt = tokenizer.encode("the cat").ids
    new = tokenizer.encode("sat on the unbelievable mat , naïve café").ids
    streamed = list(pieces(tokenizer, prompt, iter(new)))
    assert "".join(streamed) == tokenizer.decode(prompt + new, skip_special_tokens=False)
    assert streamed[0] == tokenizer.decode(prompt, skip_special_tokens=False) and len(streamed) <= 1 + len(new)
    assert all(streamed)


def test_a_streamed_byte_level_text_holds_back_half_a_character():
    """A byte-level token can end inside a character, whose prefix decodes to U+FFFD: the piece waits
    for the character's last byte instead of sending a replacement character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from zoo.common.text import pieces

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer.train_from_iterator(["plain words"], trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet))
    ids = tokenizer.encode("café über 日本").ids
    assert any("\ufffd" in tokenizer.decode(ids[:k]) for k in range(len(ids)))  # é's bytes: a token each
    streamed = list(pieces(tokenizer, [], iter(ids)))
    assert "".join(streamed) == "café über 日本" and not any("\ufffd" in piece for piece in streamed)
