"""Sequence classification task: cross-entropy, accuracy, macro F1, a test confusion matrix."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from lightning_modules.distillation import distillation_from
from lightning_modules.task_module import TaskModule
from lightning_modules.transfer import transfer_from
from zoo.common import text
from zoo.networks.classifier import SequenceClassifier


class ClassificationTask(TaskModule):
    """Trains a ``zoo.SequenceClassifier``; ``vocab_size`` and ``labels`` are linked from the datamodule.

    At test time the confusion matrix is written as ``confusion_matrix.png`` in the logger's folder.

    With a ``teacher`` the student also learns its temperature-softened class probabilities
    (``lightning_modules.distillation``). The teacher's logits are cached per text: two numbers a
    review cost nothing to keep, and the teacher then runs once per training text, not once per epoch.
    """

    def __init__(
        self,
        vocab_size: int,
        labels: list[str],
        teacher: str | None = None,
        temperature: float = 1.0,
        alpha: float = 0.5,
        encoder_from: str | None = None,
        pretrained_embeddings: str | None = None,
        freeze_embeddings: bool = False,
        word_dropout: float = 0.0,
        **architecture,
    ):
        """``teacher``, ``temperature``, ``alpha``: see ``lightning_modules.distillation.Distillation``;
        ``encoder_from``, ``pretrained_embeddings``, ``freeze_embeddings``: the first weights, see
        ``lightning_modules.transfer.Transfer``; ``word_dropout``: see ``with_word_dropout``;
        ``architecture``: the keyword arguments of ``zoo.SequenceClassifier`` (cell, sizes, pooling...)."""
        super().__init__()
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.save_hyperparameters()
        self.distillation = distillation_from(teacher, temperature, alpha)
        self.transfer = transfer_from(encoder_from, pretrained_embeddings, freeze_embeddings)
        self.network_arguments = {"vocab_size": vocab_size, "num_classes": len(labels), **architecture}
        self.net = SequenceClassifier(vocab_size, len(labels), **architecture)
        n = len(labels)
        metrics = MetricCollection({"acc": MulticlassAccuracy(n), "macro_f1": MulticlassF1Score(n, average="macro")})
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        self.confusion = MulticlassConfusionMatrix(n)

    def fit_extensions(self) -> tuple:
        return tuple(extension for extension in (self.transfer, self.distillation) if extension is not None)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids, lengths)

    def training_step(self, batch, batch_idx):
        logits = self(self.with_word_dropout(batch)["input_ids"], batch["lengths"])
        loss = F.cross_entropy(logits, batch["labels"])
        if self.distillation is not None:
            loss = self.distillation.loss(loss, logits, self._teacher_logits(batch))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def _teacher_logits(self, batch) -> torch.Tensor:
        input_ids, lengths = batch["input_ids"], batch["lengths"]
        keys = [row[:n].cpu().numpy().tobytes() for row, n in zip(input_ids, lengths.tolist(), strict=True)]
        return self.distillation.cached(keys, lambda: self.distillation.outputs(self.device, input_ids, lengths))

    def _evaluate(self, batch, metrics: MetricCollection) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["lengths"])
        metrics.update(logits, batch["labels"])
        self.log_dict(metrics, prog_bar=True, batch_size=len(logits))
        return logits

    def validation_step(self, batch, batch_idx):
        logits = self._evaluate(batch, self.val_metrics)
        self.log("val_loss", F.cross_entropy(logits, batch["labels"]), batch_size=len(logits))

    def test_step(self, batch, batch_idx):
        logits = self._evaluate(batch, self.test_metrics)
        self.confusion.update(logits, batch["labels"])

    def on_test_epoch_end(self) -> None:
        matrix = self.confusion.compute()
        self.confusion.reset()
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.is_global_zero:
            save_confusion_matrix(matrix.cpu(), self.hparams.labels, folder / "confusion_matrix.png")

    def predict_step(self, batch, batch_idx):
        return self.predict(batch["texts"])

    def classify(self, texts: list[str]) -> list[dict]:
        """Label and probabilities of raw texts (``zoo.common.predict.classification.Classification``)."""
        return self.predict(texts)

    @torch.no_grad()
    def logits(self, texts: list[str]) -> np.ndarray:
        """``(B, classes)`` for raw texts, encoded by ``zoo.common.text`` as at every entry point."""
        ids, lengths = text.pad(text.encode(self.tokenizer, texts), text.pad_id(self.tokenizer))
        return self(torch.from_numpy(ids).to(self.device), torch.from_numpy(lengths)).float().cpu().numpy()


def save_confusion_matrix(matrix: torch.Tensor, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4, len(labels) * 0.6)
    fig, ax = plt.subplots(figsize=(size, size))
    MulticlassConfusionMatrix(len(labels)).plot(matrix, ax=ax, labels=labels)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
