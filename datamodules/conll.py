"""CoNLL-2003 token tagging (NER by default; POS or chunk tags selectable)."""

from functools import cached_property

import datasets
import torch

from datamodules.base import BucketedDataModule, items_loader
from datamodules.batching import pad_sequences
from datamodules.loading import DataError, load_splits, require_column
from datamodules.tokenization import fit_char_tokenizer, fit_word_tokenizer, text_normalizer
from zoo.common import text
from zoo.common.text import IGNORE_INDEX, PAD, UNK, log

SPLITS = ("train", "validation", "test")

Example = tuple[list[int], list[list[int]], list[int]]  # word ids, char ids per word, tag ids


class CoNLLDataModule(BucketedDataModule):
    """Sentences as word ids (+ character ids per word) and one tag per word.

    Args (and those of ``TextDataModule``: ``data_dir``, ``max_samples``, ``tokenizer_from``,
    ``batch_size``, ``eval_batch_size``):
        tag_column: ``ner_tags`` (default), ``pos_tags`` or ``chunk_tags``; names from the features.
        min_frequency: words seen fewer times in train map to ``<unk>`` (characters still see them).
        lowercase: lowercase words (digits always map to 0).
        use_chars: build the character vocabulary for character-level word features.
        max_length: longer training and evaluation sentences are truncated, with a warning
            (prediction tags every word, as the task API and the exported model do).
        predict_sentences: whitespace-tokenised sentences for ``rnnzoo predict``.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        hub_name: str = "eriktks/conll2003",
        tokens_column: str = "tokens",
        tag_column: str = "ner_tags",
        min_frequency: int = 2,
        lowercase: bool = False,
        use_chars: bool = True,
        max_length: int = 200,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        max_samples: int | None = None,
        predict_sentences: list[str] | None = None,
        tokenizer_from: str | None = None,
    ):
        # A language model given as tokenizer_from (``encoder_from``) has words only: characters are then fitted.
        chars = ("char_tokenizer",) if use_chars else ()
        super().__init__(
            data_dir, tokenizer_from, ("tokenizer",), batch_size, eval_batch_size, chars, max_length=max_length
        )
        self.save_hyperparameters()

    @cached_property
    def splits(self) -> datasets.DatasetDict:
        hp = self.hparams
        loaded = load_splits(hp.hub_name, self.data_dir, SPLITS)
        for split, dataset in loaded.items():
            require_column(dataset, hp.tokens_column, split)
            require_column(dataset, hp.tag_column, split)
            loaded[split] = self.first_rows(dataset)
        feature = loaded["train"].features[hp.tag_column]
        names = getattr(getattr(feature, "feature", None), "names", None)
        if names is None:
            raise DataError(f"tag column {hp.tag_column!r} is {feature}, not a sequence of ClassLabel")
        return loaded

    @property
    def labels(self) -> list[str]:
        return list(self.splits["train"].features[self.hparams.tag_column].feature.names)

    @cached_property
    def tokenizer(self):
        if self.pretrained_tokenizers:
            return self.pretrained_tokenizers["tokenizer"]
        sentences = (" ".join(tokens) for tokens in self.splits["train"][self.hparams.tokens_column])
        normalizer = text_normalizer(self.hparams.lowercase, digits_to_zero=True)
        return fit_word_tokenizer(
            sentences, [PAD, UNK], UNK, normalizer=normalizer, min_frequency=self.hparams.min_frequency
        )

    @cached_property
    def char_tokenizer(self):
        if not self.hparams.use_chars:
            return None
        if "char_tokenizer" in self.pretrained_tokenizers:
            return self.pretrained_tokenizers["char_tokenizer"]
        sentences = (" ".join(tokens) for tokens in self.splits["train"][self.hparams.tokens_column])
        return fit_char_tokenizer(sentences, [PAD, UNK], UNK)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def char_vocab_size(self) -> int:
        return self.char_tokenizer.get_vocab_size() if self.char_tokenizer else 0

    def encode_sentences(self, sentences: list[list[str]]) -> list[tuple[list[int], list[list[int]]]]:
        """Word ids and per-word character ids (``zoo.common.text.encode_words``)."""
        try:
            return text.encode_words(self.tokenizer, self.char_tokenizer, sentences)
        except ValueError as err:
            raise DataError(str(err)) from None

    def _encode_split(self, split: str) -> list[Example]:
        dataset = self.splits[split]
        sentences, tags = dataset[self.hparams.tokens_column], dataset[self.hparams.tag_column]
        too_long = sum(len(words) > self.hparams.max_length for words in sentences)
        if too_long:
            limit = self.hparams.max_length
            log.warning(f"{too_long} {split} sentences exceed max_length={limit} tokens (words); truncated")
        examples = [
            (ids, chars, sentence_tags[: len(ids)])
            for (ids, chars), sentence_tags in zip(
                self.encode_sentences([words[: self.hparams.max_length] for words in sentences if words]),
                [t for words, t in zip(sentences, tags, strict=True) if words],
                strict=True,
            )
        ]
        if len(examples) < len(sentences):
            log.warning(f"dropped {len(sentences) - len(examples)} empty {split} sentences")
        flat = [tag for _, _, sentence_tags in examples for tag in sentence_tags]
        if flat and not 0 <= min(flat) <= max(flat) < len(self.labels):
            raise DataError(f"the {split!r} split has tags outside 0..{len(self.labels) - 1} ({self.labels})")
        return examples

    @staticmethod
    def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
        input_ids, lengths = pad_sequences([ids for ids, _, _ in examples])
        chars, char_lengths = map(
            torch.from_numpy, text.pad_words([chars for _, chars, _ in examples], input_ids.size(1))
        )
        tags, _ = pad_sequences([tags for _, _, tags in examples], pad_value=IGNORE_INDEX)
        return {"input_ids": input_ids, "lengths": lengths, "chars": chars, "char_lengths": char_lengths, "tags": tags}

    def predict_dataloader(self):
        if not self.hparams.predict_sentences:
            raise DataError("nothing to tag: pass --data.init_args.predict_sentences '[\"EU rejects German call\"]'")
        try:
            sentences = text.split_words(self.hparams.predict_sentences)
        except ValueError as err:
            raise DataError(f"predict_sentences: {err}") from None
        self.encode_sentences(sentences)  # a sentence the tagger would refuse is a DataError before the run
        return items_loader(sentences, "words", self.hparams.eval_batch_size)
