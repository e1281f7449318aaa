"""Text classification (IMDB sentiment by default): bucketed, padded batches with lengths."""

from functools import cached_property
from typing import Literal

import datasets
import torch

from datamodules.base import BucketedDataModule
from datamodules.batching import pad_sequences
from datamodules.loading import DataError, load_splits, require_column
from datamodules.tokenization import fit_bpe_tokenizer, fit_word_tokenizer, text_normalizer
from zoo.common import text
from zoo.common.text import PAD, UNK, log


class IMDBDataModule(BucketedDataModule):
    """Reviews (or any ``text``/``label`` dataset with a ``ClassLabel`` label) for classification.

    IMDB has no validation split: a seeded, stratified ``val_size`` rows are carved from train, and
    test is never used for model selection. Label names come from the dataset's features.

    Args (and those of ``TextDataModule``: ``data_dir``, ``max_samples`` (class-balanced here),
    ``tokenizer_from``, ``batch_size``, ``eval_batch_size``):
        tokenizer: ``word`` (lowercased words and punctuation, ``<br />`` removed) or ``bpe``.
        max_vocab: vocabulary size (word: most frequent words; bpe: merges target).
        min_frequency: drop words seen fewer times in train.
        max_length: longer texts are truncated (a warning says how many); the tokenizer keeps the
            limit, so prediction truncates alike everywhere.
        val_size: rows of train held out for validation.
        predict_texts: raw texts for ``rnnzoo predict``.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        hub_name: str = "stanfordnlp/imdb",
        text_column: str = "text",
        label_column: str = "label",
        tokenizer: Literal["word", "bpe"] = "word",
        max_vocab: int = 30_000,
        min_frequency: int = 2,
        lowercase: bool = True,
        max_length: int = 400,
        val_size: int = 2_500,
        seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_samples: int | None = None,
        predict_texts: list[str] | None = None,
        num_proc: int | None = None,
        tokenizer_from: str | None = None,
    ):
        super().__init__(data_dir, tokenizer_from, ("tokenizer",), batch_size, eval_batch_size, max_length=max_length)
        if tokenizer not in ("word", "bpe"):
            raise ValueError(f"tokenizer must be 'word' or 'bpe', got {tokenizer!r}")
        self.save_hyperparameters()

    @cached_property
    def splits(self) -> datasets.DatasetDict:
        hp = self.hparams
        loaded = load_splits(hp.hub_name, self.data_dir, ("train", "test"))
        for split, dataset in loaded.items():
            require_column(dataset, hp.text_column, split)
            require_column(dataset, hp.label_column, split)
        feature = loaded["train"].features[hp.label_column]
        if not isinstance(feature, datasets.ClassLabel):
            raise DataError(
                f"label column {hp.label_column!r} is {feature}, not a ClassLabel; cast it first, e.g. "
                f"ds.cast_column({hp.label_column!r}, datasets.ClassLabel(names=[...]))"
            )
        if hp.max_samples is not None:  # quick runs: a class-balanced subset of each split
            loaded = datasets.DatasetDict(
                {s: d.shuffle(seed=hp.seed).select(range(min(hp.max_samples, len(d)))) for s, d in loaded.items()}
            )
        if not len(feature.names) <= hp.val_size < len(loaded["train"]):
            raise DataError(
                f"val_size={hp.val_size} must be at least the number of classes ({len(feature.names)}) "
                f"and below the {len(loaded['train'])} training rows"
            )
        held_out = loaded["train"].train_test_split(
            test_size=hp.val_size, seed=hp.seed, stratify_by_column=hp.label_column
        )
        return datasets.DatasetDict(
            {"train": held_out["train"], "validation": held_out["test"], "test": loaded["test"]}
        )

    @property
    def labels(self) -> list[str]:
        return list(self.splits["train"].features[self.hparams.label_column].names)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @cached_property
    def tokenizer(self):
        hp = self.hparams
        if self.pretrained_tokenizers:
            tokenizer = self.pretrained_tokenizers["tokenizer"]
            tokenizer.enable_truncation(hp.max_length)  # a language model's (encoder_from) has no limit of its own
            return tokenizer
        normalizer = text_normalizer(lowercase=hp.lowercase, replacements={"<br />": " "})
        texts = self.splits["train"][hp.text_column]
        if hp.tokenizer == "bpe":
            tokenizer = fit_bpe_tokenizer(texts, [PAD, UNK], UNK, normalizer=normalizer, vocab_size=hp.max_vocab)
        else:
            from tokenizers import pre_tokenizers

            tokenizer = fit_word_tokenizer(
                texts,
                [PAD, UNK],
                UNK,
                normalizer=normalizer,
                pre_tokenizer=pre_tokenizers.Whitespace(),
                max_size=hp.max_vocab,
                min_frequency=hp.min_frequency,
            )
        tokenizer.enable_truncation(hp.max_length)
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def _encode_split(self, split: str) -> list[tuple[list[int], int]]:
        hp, tokenizer = self.hparams, self.tokenizer

        def numericalize(batch):
            encodings = tokenizer.encode_batch(batch[hp.text_column])
            return {"ids": [e.ids for e in encodings], "truncated": [bool(e.overflowing) for e in encodings]}

        dataset = self.splits[split]
        encoded = dataset.map(numericalize, batched=True, num_proc=hp.num_proc, remove_columns=[hp.text_column])
        text.warn_truncated(tokenizer, encoded["truncated"], f"{split} texts")
        labels, ids = encoded[hp.label_column], encoded["ids"]
        if labels and not 0 <= min(labels) <= max(labels) < self.num_classes:
            raise DataError(f"the {split!r} split has labels outside 0..{self.num_classes - 1} ({self.labels})")
        examples = [(row, label) for row, label in zip(ids, labels, strict=True) if row]
        if len(examples) < len(ids):
            log.warning(f"dropped {len(ids) - len(examples)} empty {split} texts")
        return examples

    @staticmethod
    def collate(examples: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        input_ids, lengths = pad_sequences([ids for ids, _ in examples])
        return {"input_ids": input_ids, "lengths": lengths, "labels": torch.tensor([label for _, label in examples])}

    def predict_dataloader(self):
        texts = self.hparams.predict_texts
        if not texts:
            raise DataError('nothing to predict: pass texts with --data.init_args.predict_texts \'["...", "..."]\'')
        return self.text_loader(texts, self.tokenizer)
