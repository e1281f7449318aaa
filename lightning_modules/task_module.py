"""Carry the datamodule's tokenizers inside every checkpoint, so a ``.ckpt`` alone can predict,
and refuse a checkpoint whose vocabulary or labels differ from the data it is used with."""

import math

import lightning as L
import torch
from tokenizers import Tokenizer

from zoo.common import tasks, text
from zoo.common.formats import DecodingSpec
from zoo.common.predict import predict
from zoo.common.text import vocabulary_difference


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class TaskModule(L.LightningModule):
    """Base for tasks: copies the datamodule's tokenizers, saves them with the task's name
    (``zoo.common.tasks``), restores and checks them.

    The task's ``tokenizers`` are datamodule attributes (and checkpoint keys); a tagger also has a
    ``char_tokenizer``, a translator a ``source_tokenizer`` and a ``target_tokenizer``.
    """

    checked_hparams: tuple[str, ...] = ("labels",)  # must equal the data's when a checkpoint is loaded
    # The arguments of the zoo architecture in ``self.net``. Each task still calls the architecture
    # with ``**architecture`` spelled out: LightningCLI reads that call to learn the accepted options.
    network_arguments: dict

    def __init__(self):
        super().__init__()
        self.tokenizer_jsons: dict[str, str] = {}

    @property
    def tokenizer_names(self) -> tuple[str, ...]:
        return tasks.of_class(type(self)).tokenizers

    @property
    def task(self) -> str:
        """The ``zoo.common.tasks`` name."""
        return tasks.of_class(type(self)).name

    @property
    def labels(self) -> list[str] | None:
        return self.hparams.get("labels")

    @property
    def decoding(self) -> DecodingSpec:
        return DecodingSpec.of(dict(self.hparams))

    @torch.no_grad()
    def predict(self, items: list, options=None) -> list[dict]:
        """The task's records for raw ``items`` (``zoo.common.predict``: the same at every entry point, the
        exported model's included)."""
        self.eval()
        return predict(self, items, options)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        for name in self.tokenizer_names:
            tokenizer = getattr(datamodule, name, None)
            if tokenizer is not None and name not in self.tokenizer_jsons:
                self.tokenizer_jsons[name] = tokenizer.to_str()
        if stage == "fit":
            for extension in self.fit_extensions():
                extension.attach(self)

    def fit_extensions(self) -> tuple:
        """What the task adds to its training, each ``attach``ed before fit, in order: first weights
        (``lightning_modules.transfer``), then a teacher (``lightning_modules.distillation``)."""
        return ()

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stop before a NaN/inf loss reaches the weights: no backward, no optimizer step, and no
        checkpoint is written, so ``last.ckpt`` keeps the last finite weights."""
        value = loss.item()  # one scalar read, as the plain loop's `loss.item()`: the step's only host sync
        if not math.isfinite(value):
            step, epoch = self.trainer.global_step, self.trainer.current_epoch
            raise NonFiniteLoss(
                f"training stopped at step {step} (epoch {epoch}): the loss is {value}; the checkpoints "
                "hold the last finite weights (try a lower learning rate or gradient clipping)"
            )

    def with_word_dropout(self, batch: dict) -> dict:
        """``batch`` whose ``input_ids`` each become ``<unk>`` with probability ``word_dropout`` (a
        hyperparameter of the classifier and tagger) while training: the model learns a use for the
        unknown word from every word, and leans on other features (characters, context) for rare ones
        (Iyyer et al. 2015; Lample et al. 2016 replace singletons alike)."""
        p = self.hparams.get("word_dropout", 0.0)
        if not self.training or not p:
            return batch
        unk = self.tokenizer.token_to_id(text.UNK)
        if unk is None:
            raise ValueError(f"word_dropout replaces words by {text.UNK}, which this tokenizer does not have")
        ids = batch["input_ids"]
        return {**batch, "input_ids": ids.masked_fill(torch.rand(ids.shape, device=ids.device) < p, unk)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuse to write non-finite weights: a finite loss can still come with an update that
        overflows, and the checkpoint would keep it (the file is left as it was)."""
        parameters = list(self.parameters())
        if parameters and not bool(torch.stack([torch.isfinite(p).all() for p in parameters]).all()):
            bad = [name for name, p in self.named_parameters() if not torch.isfinite(p).all()]
            step, epoch = self.trainer.global_step, self.trainer.current_epoch
            raise NonFiniteLoss(
                f"training stopped at step {step} (epoch {epoch}): {len(bad)} weight tensors hold NaN or infinite "
                f"values ({', '.join(bad[:3])}); the checkpoints hold the last finite weights (try a lower learning "
                "rate or gradient clipping)"
            )
        checkpoint["task"] = self.task
        for name in self.tokenizer_names:
            checkpoint[name] = self.tokenizer_jsons.get(name)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.check_trained_on_same_data(checkpoint.get("hyper_parameters", {}), "the checkpoint")
        saved = {name: checkpoint[name] for name in self.tokenizer_names if checkpoint.get(name) is not None}
        difference = vocabulary_difference(saved, self.tokenizer_jsons)
        if difference:
            raise ValueError(
                f"the checkpoint has {difference} than the datamodule: use the data (and tokenizer settings) "
                "it was trained on"
            )
        self.tokenizer_jsons |= saved

    def check_trained_on_same_data(self, trained_hparams: dict, source: str) -> None:
        """Raise if ``trained_hparams`` (a checkpoint's or pretrained folder's) name other labels
        (or language pair) than this task's data."""
        for key in self.checked_hparams:
            trained_on, ours = trained_hparams.get(key), self.hparams.get(key)
            if isinstance(trained_on, tuple | list) and isinstance(ours, tuple | list):
                trained_on, ours = list(trained_on), list(ours)
            if trained_on is not None and ours is not None and trained_on != ours:
                raise ValueError(f"{source} was trained with {key} {trained_on}, the data has {ours}")

    def get_tokenizer(self, name: str = "tokenizer") -> Tokenizer:
        if name not in self.tokenizer_jsons:
            raise RuntimeError(f"this model has no {name}: train it with a datamodule or load a checkpoint")
        return Tokenizer.from_str(self.tokenizer_jsons[name])

    @property
    def tokenizer(self) -> Tokenizer:
        return self.get_tokenizer("tokenizer")
