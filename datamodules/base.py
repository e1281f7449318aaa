"""Plumbing shared by the datamodules of padded, length-bucketed examples (classification, tagging)."""

import lightning as L
from torch.utils.data import DataLoader

from datamodules.batching import bucketed_loader

STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}


class BucketedDataModule(L.LightningDataModule):
    """Subclasses provide ``splits`` (a DatasetDict), ``_encode_split(split)`` -> examples whose
    first element is the token ids, ``collate(examples)`` and the hyperparameters ``seed``,
    ``batch_size`` and ``eval_batch_size``."""

    def __init__(self):
        super().__init__()
        self.examples: dict[str, list] = {}

    def prepare_data(self):
        _ = self.splits  # download (or check the local files) before any process sets up

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
