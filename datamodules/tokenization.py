"""Tokenizers fitted with the Hugging Face ``tokenizers`` library."""

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers


def _fit_word_level(tokenizer: Tokenizer, texts: Iterable[str], special_tokens: list[str], unk_token: str) -> Tokenizer:
    # The trainer sees no special tokens: given one that also occurs in the text (PTB's literal
    # `<unk>`), WordLevelTrainer assigns it two ids and leaves a hole in the id range. Instead the
    # special tokens take ids 0.. in the order given, then the words by decreasing frequency.
    trainer = trainers.WordLevelTrainer(min_frequency=1, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    ordered = special_tokens + [token for token, _ in by_id if token not in special_tokens]
    tokenizer.model = models.WordLevel({token: i for i, token in enumerate(ordered)}, unk_token=unk_token)
    tokenizer.add_special_tokens(special_tokens)
    return tokenizer


def fit_word_tokenizer(texts: Iterable[str], special_tokens: list[str], unk_token: str = "<unk>") -> Tokenizer:
    """Whitespace word-level vocabulary of every word in ``texts``, special tokens first."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=unk_token))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _fit_word_level(tokenizer, texts, special_tokens, unk_token)


def fit_char_tokenizer(texts: Iterable[str], special_tokens: list[str], unk_token: str = "<unk>") -> Tokenizer:
    """Character-level vocabulary: every character, the space included, is one token."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=unk_token))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return _fit_word_level(tokenizer, texts, special_tokens, unk_token)
