"""Penn Treebank (Mikolov's language-modelling split) as a contiguous token stream."""

from functools import cached_property
from typing import Literal

import pyarrow.compute
import torch

from datamodules.base import TextDataModule
from datamodules.loading import DataError, load_splits, require_column
from datamodules.streams import BPTTWindows, WindowLoader, stream_layout
from datamodules.tokenization import fit_char_tokenizer, fit_word_tokenizer
from zoo.text import EOS, UNK

SPLITS = ("train", "validation", "test")


class PTBDataModule(TextDataModule):
    """Word- or character-level Penn Treebank for language modelling.

    Each sentence is followed by ``<eos>``; the vocabulary is fitted on train (word level: PTB's own
    10,000 words). Batches are ``(batch_size, bptt)`` windows of one contiguous stream per split.

    Args (and those of ``TextDataModule``: ``data_dir``, ``max_samples``, ``tokenizer_from``):
        hub_name, hub_config, hub_revision, hub_subdir: the Hugging Face Hub dataset (and its
            branch and folder) to use when there is no ``data_dir``.
        text_column: the column holding one sentence per row.
        level: ``word`` or ``char`` (every character, the space included, is a token).
        batch_size, eval_batch_size: rows of the training stream, of the validation and test streams.
        bptt: steps per batch (truncated backpropagation through time).
        num_proc: processes for ``Dataset.map`` during numericalisation.
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
    ):
        super().__init__(data_dir, tokenizer_from, ("tokenizer",), batch_size, eval_batch_size, bptt=bptt)
        if level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char', got {level!r}")
        self.save_hyperparameters()
        self.streams: dict[str, torch.Tensor] = {}

    @cached_property
    def splits(self):
        loaded = load_splits(
            self.hparams.hub_name,
            self.data_dir,
            SPLITS,
            self.hparams.hub_config,
            self.hparams.hub_revision,
            self.hparams.hub_subdir,
        )
        for split, dataset in loaded.items():
            require_column(dataset, self.hparams.text_column, split)
            loaded[split] = self.first_rows(dataset)
        return loaded

    @cached_property
    def tokenizer(self):
        if self.pretrained_tokenizers:
            return self.pretrained_tokenizers["tokenizer"]
        fit = fit_word_tokenizer if self.hparams.level == "word" else fit_char_tokenizer
        return fit(self.splits["train"][self.hparams.text_column], special_tokens=[UNK, EOS])

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
        needed = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}.get(stage, SPLITS)
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
