"""Penn Treebank (Mikolov's language-modelling split) as a contiguous token stream."""

import itertools
from functools import cached_property
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from datamodules.loading import DataError, load_splits, require_column, require_positive
from datamodules.streams import BPTTWindows, WindowLoader, stream_layout
from datamodules.tokenization import fit_char_tokenizer, fit_word_tokenizer, pretrained_tokenizers

SPLITS = ("train", "validation", "test")
UNK, EOS = "<unk>", "<eos>"


class PTBDataModule(L.LightningDataModule):
    """Word- or character-level Penn Treebank for language modelling.

    Each sentence is followed by ``<eos>``; the vocabulary is fitted on train (word level: PTB's own
    10,000 words). Batches are ``(batch_size, bptt)`` windows of one contiguous stream per split.

    Args:
        data_dir: folder with ``train/validation/test.parquet``; ``None`` downloads ``hub_name``.
        hub_name, hub_config, hub_revision, hub_subdir: the Hugging Face Hub dataset (and its
            branch and folder) to use when there is no ``data_dir``.
        text_column: the column holding one sentence per row.
        level: ``word`` or ``char`` (every character, the space included, is a token).
        batch_size: rows of the training stream.
        eval_batch_size: rows of the validation and test streams.
        bptt: steps per batch (truncated backpropagation through time).
        max_samples: use only the first ``max_samples`` rows of each split (quick runs).
        num_proc: processes for ``Dataset.map`` during numericalisation.
        tokenizer_from: a pretrained folder or zoo entry whose tokenizers to use instead of fitting
            new ones on train (``rnnzoo fit --ckpt_path <pretrained>`` sets it: fine-tuning keeps the
            pretrained vocabulary).
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
        super().__init__()
        require_positive(batch_size=batch_size, eval_batch_size=eval_batch_size, bptt=bptt)
        if level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char', got {level!r}")
        self.save_hyperparameters()
        self.data_dir = str(Path(data_dir).expanduser()) if data_dir is not None else None
        self.streams: dict[str, torch.Tensor] = {}
        self.pretrained_tokenizers = pretrained_tokenizers(tokenizer_from, ["tokenizer"])

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
            if self.hparams.max_samples is not None:
                loaded[split] = dataset.select(range(min(self.hparams.max_samples, len(dataset))))
        return loaded

    @cached_property
    def tokenizer(self):
        if self.pretrained_tokenizers:
            return self.pretrained_tokenizers["tokenizer"]
        fit = fit_word_tokenizer if self.hparams.level == "word" else fit_char_tokenizer
        return fit(self.splits["train"][self.hparams.text_column], special_tokens=[UNK, EOS])

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self.tokenizer.token_to_id(EOS)

    def prepare_data(self):
        _ = self.splits  # download (or check the local files) before any process sets up

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
        stream = torch.tensor(list(itertools.chain.from_iterable(encoded["ids"])), dtype=torch.long)
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
