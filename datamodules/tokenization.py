"""Tokenizers fitted with the Hugging Face ``tokenizers`` library."""

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from datamodules.loading import DataError


def text_normalizer(
    lowercase: bool = False, replacements: dict[str, str] | None = None, digits_to_zero: bool = False
) -> normalizers.Normalizer:
    """Replace markup (e.g. IMDB's ``<br />``), optionally every digit by 0 (CoNLL taggers' words) and
    lowercase, before splitting."""
    steps = [normalizers.Replace(old, new) for old, new in (replacements or {}).items()]
    if digits_to_zero:
        steps.append(normalizers.Replace(Regex(r"\d"), "0"))
    if lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps)


def fit_word_tokenizer(
    texts: Iterable[str],
    special_tokens: list[str],
    unk_token: str = "<unk>",
    *,
    normalizer: normalizers.Normalizer | None = None,
    pre_tokenizer: pre_tokenizers.PreTokenizer | None = None,
    max_size: int | None = None,
    min_frequency: int = 1,
) -> Tokenizer:
    """Word-level vocabulary (whitespace-split unless ``pre_tokenizer`` says otherwise).

    Ids: the special tokens in the order given, then words by decreasing frequency, at most
    ``max_size`` entries in all, each word seen at least ``min_frequency`` times.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=unk_token))
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer or pre_tokenizers.WhitespaceSplit()
    return _fit_word_level(tokenizer, texts, special_tokens, unk_token, max_size, min_frequency)


def fit_char_tokenizer(
    texts: Iterable[str],
    special_tokens: list[str],
    unk_token: str = "<unk>",
    *,
    normalizer: normalizers.Normalizer | None = None,
) -> Tokenizer:
    """Character-level vocabulary: every character (after ``normalizer``), the space included, is one token."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=unk_token))
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return _fit_word_level(tokenizer, texts, special_tokens, unk_token)


def fit_bpe_tokenizer(
    texts: Iterable[str],
    special_tokens: list[str],
    unk_token: str = "<unk>",
    *,
    normalizer: normalizers.Normalizer | None = None,
    vocab_size: int = 16_000,
    min_frequency: int = 2,
) -> Tokenizer:
    """Byte-pair encoding over whitespace/punctuation-split words (Sennrich et al. 2016)."""
    tokenizer = Tokenizer(models.BPE(unk_token=unk_token, end_of_word_suffix="</w>"))
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def reversible_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Words marked with a leading ``▁`` where a space was, punctuation split off (SentencePiece
    style): with ``decoders.Metaspace()`` decoding gives back the original spacing, which
    detokenized metrics such as sacreBLEU need."""
    return pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])


def fit_reversible_tokenizer(
    texts: Iterable[str],
    special_tokens: list[str],
    unk_token: str = "<unk>",
    *,
    kind: str = "bpe",
    lowercase: bool = False,
    vocab_size: int = 8_000,
    min_frequency: int = 2,
) -> Tokenizer:
    """A ``bpe`` or ``word`` tokenizer whose ``decode`` restores the text (up to ``lowercase``)."""
    normalizer = text_normalizer(lowercase=lowercase)
    if kind == "word":
        tokenizer = fit_word_tokenizer(
            texts,
            special_tokens,
            unk_token,
            normalizer=normalizer,
            pre_tokenizer=reversible_pre_tokenizer(),
            max_size=vocab_size,
            min_frequency=min_frequency,
        )
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=unk_token))
        tokenizer.normalizer = normalizer
        tokenizer.pre_tokenizer = reversible_pre_tokenizer()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens, show_progress=False
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
    else:
        raise ValueError(f"tokenizer kind must be 'bpe' or 'word', got {kind!r}")
    tokenizer.decoder = decoders.Metaspace()
    return tokenizer


def _fit_word_level(
    tokenizer: Tokenizer,
    texts: Iterable[str],
    special_tokens: list[str],
    unk_token: str,
    max_size: int | None = None,
    min_frequency: int = 1,
) -> Tokenizer:
    # The trainer sees no special tokens: given one that also occurs in the text (PTB's literal
    # `<unk>`), WordLevelTrainer assigns it two ids and leaves a hole in the id range. Instead the
    # special tokens take ids 0.. in the order given, then the words by decreasing frequency.
    trainer = trainers.WordLevelTrainer(min_frequency=min_frequency, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    ordered = special_tokens + [token for token, _ in by_id if token not in special_tokens]
    if max_size is not None:
        ordered = ordered[:max_size]
    tokenizer.model = models.WordLevel({token: i for i, token in enumerate(ordered)}, unk_token=unk_token)
    tokenizer.add_special_tokens(special_tokens)
    return tokenizer


def pretrained_tokenizers(
    source: str | None, names: Iterable[str], optional: Iterable[str] = ()
) -> dict[str, Tokenizer]:
    """The tokenizers ``names`` of a pretrained folder, zoo entry or ``.ckpt`` (``tokenizer_from``),
    used instead of fitting new ones so that fine-tuning keeps the pretrained vocabulary, and those of
    ``optional`` that it has (a language model has no character vocabulary); {} for None."""
    if source is None:
        return {}
    from zoo.storage.checkpoint import checkpoint_tokenizers
    from zoo.storage.hub import resolve
    from zoo.storage.pretrained import load_tokenizers

    try:
        found = checkpoint_tokenizers(source) if str(source).endswith(".ckpt") else load_tokenizers(resolve(source))
    except (OSError, ValueError) as err:
        raise DataError(f"tokenizer_from={source!r}: {err}") from None
    missing = [name for name in names if name not in found]
    if missing:
        raise DataError(
            f"tokenizer_from={source!r} has no {', '.join(missing)} (it has: {', '.join(found) or 'none'}); "
            "use a pretrained model of this task"
        )
    return {name: found[name] for name in [*names, *optional] if name in found}
