"""What the datamodules share: the options of every one (``TextDataModule``) and the plumbing of
those that batch padded, length-bucketed examples (``BucketedDataModule``: classification, tagging,
translation)."""

from pathlib import Path

import datasets
import lightning as L
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from datamodules.batching import bucketed_loader
from datamodules.loading import DataError, require_positive
from datamodules.tokenization import pretrained_tokenizers
from zoo.common import text


def items_loader(items: list, key: str, batch_size: int) -> DataLoader:
    """Batches ``{key: [item, ...]}`` of raw items, for ``rnnzoo predict``."""
    return DataLoader(items, batch_size=batch_size, collate_fn=lambda batch: {key: list(batch)})


STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}


class TextDataModule(L.LightningDataModule):
    """Options every rnnzoo datamodule has, with the same meaning:

    Args:
        data_dir: a folder of ``<split>.parquet`` files (the Hub's Parquet layout); ``None`` loads the
            Hugging Face Hub dataset ``hub_name``.
        max_samples: use only ``max_samples`` rows of each split (quick runs).
        tokenizer_from: a pretrained folder or zoo entry whose tokenizers to use instead of fitting
            new ones on train (``rnnzoo fit --ckpt_path <pretrained>`` sets it: fine-tuning keeps the
            pretrained vocabulary).
        batch_size, eval_batch_size: of training and of validation/test/predict batches.

    Subclasses provide ``splits`` (the loaded, checked splits).
    """

    def __init__(
        self,
        data_dir: str | None,
        tokenizer_from: str | None,
        tokenizer_names: tuple[str, ...],
        batch_size: int,
        eval_batch_size: int,
        optional_tokenizer_names: tuple[str, ...] = (),
        **sizes: int,
    ):
        """``optional_tokenizer_names``: taken from ``tokenizer_from`` when it has them, else fitted;
        ``sizes``: more options that must be >= 1, by name."""
        super().__init__()
        require_positive(batch_size=batch_size, eval_batch_size=eval_batch_size, **sizes)
        self.data_dir = str(Path(data_dir).expanduser()) if data_dir is not None else None
        self.pretrained_tokenizers = pretrained_tokenizers(tokenizer_from, tokenizer_names, optional_tokenizer_names)

    def prepare_data(self):
        _ = self.splits  # download (or check the local files) before any process sets up

    def text_loader(self, texts: list[str], tokenizer: Tokenizer, end: str | None = None) -> DataLoader:
        """``rnnzoo predict``'s batches of raw ``texts`` (``{"texts": [...]}``), which the task encodes
        with ``zoo.common.text`` (``task.predict``, as at every entry point); a text it would refuse is a
        ``DataError`` here, before the run starts."""
        try:
            text.encode(tokenizer, texts, "predict_texts", end=end)
        except ValueError as err:
            raise DataError(str(err)) from None
        return items_loader(texts, "texts", self.hparams.eval_batch_size)

    def first_rows(self, dataset):
        """``dataset`` cut to ``max_samples`` rows (a stream: its first rows)."""
        limit = self.hparams.max_samples
        if limit is None:
            return dataset
        if isinstance(dataset, datasets.IterableDataset):
            return dataset.take(limit)
        return dataset.select(range(min(limit, len(dataset))))


class BucketedDataModule(TextDataModule):
    """Subclasses provide ``splits`` (a DatasetDict), ``_encode_split(split)`` -> examples whose
    first element is the token ids, ``collate(examples)`` and the hyperparameters ``seed``,
    ``batch_size`` and ``eval_batch_size``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.examples: dict[str, list] = {}

    def setup(self, stage: str | None = None):
        for split in STAGE_SPLITS.get(stage, ()):
            if split not in self.examples:
                self.examples[split] = self._encode_split(split)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        examples = self.examples[split]
        lengths = [len(example[0]) for example in examples]
        return bucketed_loader(examples, lengths, batch_size, self.collate, shuffle, self.hparams.seed, self.trainer)

    def train_dataloader(self):
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader("validation", self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader("test", self.hparams.eval_batch_size, shuffle=False)
