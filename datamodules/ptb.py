"""Penn Treebank (Mikolov's language-modelling split) as a contiguous token stream."""

from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from typing import Literal

import datasets
import pyarrow.compute
import torch
from tokenizers import pre_tokenizers

from datamodules.base import STAGE_SPLITS, TextDataModule
from datamodules.loading import DataError, load_splits, require_column, require_positive
from datamodules.streams import BPTTWindows, WindowLoader, stream_layout
from datamodules.tokenization import fit_char_tokenizer, fit_word_tokenizer, text_normalizer
from zoo.common.text import EOS, UNK

SPLITS = ("train", "validation", "test")
SPECIAL_TOKENS = [UNK, EOS]


class LazySplits(Mapping):
    """The splits by name, each loaded (and checked) when first read, so a stage opens only its own files."""

    def __init__(self, load: Callable[[tuple[str, ...]], dict[str, datasets.Dataset]]):
        self._load = load
        self._loaded: dict[str, datasets.Dataset] = {}

    def load(self, *splits: str) -> None:
        """Load those of ``splits`` not loaded yet, in one call."""
        missing = tuple(split for split in splits if split not in self._loaded)
        if missing:
            self._loaded |= self._load(missing)

    def __getitem__(self, split: str) -> datasets.Dataset:
        if split not in SPLITS:
            raise KeyError(split)
        self.load(split)
        return self._loaded[split]

    def __iter__(self) -> Iterator[str]:
        return iter(SPLITS)

    def __len__(self) -> int:
        return len(SPLITS)


class PTBDataModule(TextDataModule):
    """Word- or character-level Penn Treebank (or any one-text-per-row corpus) for language modelling.

    Each row is followed by ``<eos>``; the vocabulary is fitted on train (word level: PTB's own
    10,000 words). Batches are ``(batch_size, bptt)`` windows of one contiguous stream per split.
    A stage loads only its splits (``fit``: train and validation, ``validate``: validation,
    ``test``: test); raw text such as IMDB reviews takes the tokenizer options below.

    Args (and those of ``TextDataModule``: ``data_dir``, ``max_samples`` (with ``val_size``: rows of
    train and of the held-out rows), ``tokenizer_from``):
        hub_name, hub_config, hub_revision, hub_subdir: the Hugging Face Hub dataset (and its
            branch and folder) to use when there is no ``data_dir``.
        text_column: the column holding one sentence (or document) per row: a string, or a list of
            words (CoNLL-2003's ``tokens``), read joined by spaces.
        level: ``word`` or ``char`` (every character, the space included, is a token).
        batch_size, eval_batch_size: rows of the training stream, of the validation and test streams.
        bptt: steps per batch (truncated backpropagation through time).
        num_proc: processes for ``Dataset.map`` during numericalisation.
        lowercase: lowercase the text before splitting it.
        split_punctuation: (word level) split punctuation off words (``tokenizers``' ``Whitespace``
            pre-tokenizer, as ``IMDBDataModule`` does); otherwise words are split on whitespace only.
        replacements: strings replaced before splitting, e.g. IMDB's markup ``{"<br />": " "}``.
        digits_to_zero: every digit becomes 0 before splitting, as ``CoNLLDataModule`` reads words (a
            language model whose encoder a CoNLL tagger starts from).
        max_vocab: (word level) at most this many tokens, ``<unk>`` and ``<eos>`` included: the most
            frequent words of train.
        min_frequency: (word level) drop words seen fewer times in train.
        val_size: hold out this many rows of train (seeded shuffle) as the validation split, for data
            without one (IMDB); the data's own validation split is then not read.
        seed: of the ``val_size`` shuffle.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        hub_name: str = "ptb-text-only/ptb_text_only",
        hub_config: str | None = None,
        # The Hub repository holds a loading script (no longer run by `datasets`); its Parquet
        # export lives on this branch, one folder per config.
        hub_revision: str | None = "refs/convert/parquet",
        hub_subdir: str | None = "penn_treebank",
        text_column: str = "sentence",
        level: Literal["word", "char"] = "word",
        batch_size: int = 20,
        eval_batch_size: int = 10,
        bptt: int = 20,
        max_samples: int | None = None,
        num_proc: int | None = None,
        tokenizer_from: str | None = None,
        lowercase: bool = False,
        split_punctuation: bool = False,
        replacements: dict[str, str] | None = None,
        digits_to_zero: bool = False,
        max_vocab: int | None = None,
        min_frequency: int = 1,
        val_size: int | None = None,
        seed: int = 1234,
    ):
        super().__init__(data_dir, tokenizer_from, ("tokenizer",), batch_size, eval_batch_size, bptt=bptt)
        if level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char', got {level!r}")
        word_options = {"split_punctuation": split_punctuation, "max_vocab": max_vocab is not None}
        word_options["min_frequency"] = min_frequency != 1
        if level == "char" and any(word_options.values()):
            given = ", ".join(name for name, is_set in word_options.items() if is_set)
            raise ValueError(f"level='char' takes no {given} (word-level options); remove it or use level='word'")
        require_positive(min_frequency=min_frequency)
        if max_vocab is not None and max_vocab <= len(SPECIAL_TOKENS):
            raise ValueError(f"max_vocab counts {', '.join(SPECIAL_TOKENS)} too: it must be above 2, got {max_vocab}")
        if val_size is not None and val_size < 1:
            raise DataError(
                f"val_size must be >= 1 (rows of train held out for validation), got {val_size}; "
                "or leave it unset to use the data's validation split"
            )
        self.save_hyperparameters()
        self.streams: dict[str, torch.Tensor] = {}
        self.splits = LazySplits(self._load)

    def _load(self, splits: tuple[str, ...]) -> dict[str, datasets.Dataset]:
        """``splits`` loaded, checked and cut to ``max_samples``; with ``val_size``, train and
        validation both come from the train file."""
        hp = self.hparams
        held_out = hp.val_size is not None
        files = tuple(dict.fromkeys("train" if held_out and split == "validation" else split for split in splits))
        loaded = dict(load_splits(hp.hub_name, self.data_dir, files, hp.hub_config, hp.hub_revision, hp.hub_subdir))
        for split, dataset in loaded.items():
            require_column(dataset, hp.text_column, split)
            loaded[split] = self._as_text(dataset, split)
        if held_out and "train" in loaded:
            loaded["train"], loaded["validation"] = self._hold_out(loaded["train"])
        return {split: self.first_rows(dataset) for split, dataset in loaded.items()}

    def _as_text(self, dataset: datasets.Dataset, split: str) -> datasets.Dataset:
        """``dataset`` with a list-of-words text column joined into strings."""
        column = self.hparams.text_column
        feature = dataset.features[column]
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            return dataset
        words = getattr(feature, "feature", None)
        if not (isinstance(words, datasets.Value) and words.dtype in ("string", "large_string")):
            raise DataError(f"the {split!r} split's {column!r} column is {feature}, not text or a list of words")
        return dataset.map(lambda batch: {column: [" ".join(row) for row in batch[column]]}, batched=True)

    def _hold_out(self, train: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset]:
        """Train without ``val_size`` seeded, shuffled rows, and those rows."""
        val_size = self.hparams.val_size
        if val_size >= len(train):
            raise DataError(
                f"val_size={val_size} is not below the {len(train)} training rows; hold out fewer (e.g. a tenth "
                "of them), or leave val_size unset to use the data's validation split"
            )
        parts = train.train_test_split(test_size=val_size, seed=self.hparams.seed, shuffle=True)
        return parts["train"], parts["test"]

    def prepare_data(self):
        # Under a Trainer, only the files its stage reads: a language model fitted with ``val_size``
        # never opens test.parquet (IMDB's test reviews must stay unseen until the classifier's test).
        stage = self.trainer.state.fn.value if self.trainer is not None and self.trainer.state.fn else None
        self.splits.load(*STAGE_SPLITS.get(stage, SPLITS))

    @cached_property
    def tokenizer(self):
        if self.pretrained_tokenizers:
            return self.pretrained_tokenizers["tokenizer"]
        hp = self.hparams
        texts = self.splits["train"][hp.text_column]
        normalizing = hp.lowercase or hp.replacements or hp.digits_to_zero
        normalizer = text_normalizer(hp.lowercase, hp.replacements, hp.digits_to_zero) if normalizing else None
        if hp.level == "char":
            return fit_char_tokenizer(texts, special_tokens=SPECIAL_TOKENS, normalizer=normalizer)
        return fit_word_tokenizer(
            texts,
            special_tokens=SPECIAL_TOKENS,
            normalizer=normalizer,
            pre_tokenizer=pre_tokenizers.Whitespace() if hp.split_punctuation else None,
            max_size=hp.max_vocab,
            min_frequency=hp.min_frequency,
        )

    @property
    def level(self) -> str:
        """``word`` or ``char``: linked into the language model, which logs bits per character for ``char``."""
        return self.hparams.level

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self.tokenizer.token_to_id(EOS)

    def encode(self, split: str) -> torch.Tensor:
        """The whole split as one stream of ids, ``<eos>`` after every sentence."""
        tokenizer, eos = self.tokenizer, self.eos_id
        column = self.hparams.text_column

        def numericalize(batch):
            return {"ids": [encoding.ids + [eos] for encoding in tokenizer.encode_batch(batch[column])]}

        dataset = self.splits[split]
        encoded = dataset.map(
            numericalize, batched=True, remove_columns=dataset.column_names, num_proc=self.hparams.num_proc
        )
        # Flattened by Arrow, not through a million Python ints: encoding PTB's train split peaks 11 MB lower.
        stream = torch.tensor(pyarrow.compute.list_flatten(encoded.data.column("ids")).to_numpy(), dtype=torch.long)
        if stream.numel() < 2:
            raise DataError(f"the {split!r} split has fewer than 2 tokens; a language model needs more")
        return stream

    def setup(self, stage: str | None = None):
        needed = STAGE_SPLITS.get(stage, SPLITS)
        self.splits.load(*needed)
        for split in needed:
            if split not in self.streams:
                self.streams[split] = self.encode(split)

    def _windows(self, split: str, batch_size: int) -> WindowLoader:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        inputs, targets = stream_layout(self.streams[split], batch_size, self.eos_id, rank, world_size)
        return WindowLoader(BPTTWindows(inputs, targets, self.hparams.bptt))

    def train_dataloader(self):
        return self._windows("train", self.hparams.batch_size)

    def val_dataloader(self):
        return self._windows("validation", self.hparams.eval_batch_size)

    def test_dataloader(self):
        return self._windows("test", self.hparams.eval_batch_size)
