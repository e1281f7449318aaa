"""Token tagging task: CRF or softmax loss; entity-level F1 with seqeval, token accuracy."""

from typing import Literal

import torch
import torch.distributed as dist
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from datamodules.conll import CoNLLDataModule
from lightning_modules.distillation import distillation_from, kl_per_position
from lightning_modules.task_module import TaskModule
from lightning_modules.transfer import transfer_from
from zoo.common import text
from zoo.networks.tagger import SequenceTagger


def is_iob2(labels: list[str]) -> bool:
    return all(label == "O" or label[:2] in ("B-", "I-") for label in labels)


class TaggingTask(TaskModule):
    """Trains a ``zoo.SequenceTagger``; ``vocab_size``, ``char_vocab_size`` and ``labels`` come from the data.

    Validation/test report token accuracy and, for IOB2 tag sets (NER, chunking), the CoNLL
    entity-level precision/recall/F1 computed by seqeval in strict IOB2 mode (per type at test).

    With a ``teacher`` (``lightning_modules.distillation``) the student learns, per token, the
    teacher's ``distill_on``: ``emissions`` (softmax of the tag scores) or ``marginals`` (each
    token's tag distribution under the whole CRF, transitions included; both models need a CRF).
    """

    def __init__(
        self,
        vocab_size: int,
        labels: list[str],
        char_vocab_size: int = 0,
        teacher: str | None = None,
        temperature: float = 1.0,
        alpha: float = 0.5,
        encoder_from: str | None = None,
        pretrained_embeddings: str | None = None,
        freeze_embeddings: bool = False,
        word_dropout: float = 0.0,
        distill_on: Literal["emissions", "marginals"] = "emissions",
        **architecture,
    ):
        """``teacher``, ``temperature``, ``alpha``: see ``lightning_modules.distillation.Distillation``;
        ``encoder_from``, ``pretrained_embeddings``, ``freeze_embeddings``: the first weights, see
        ``lightning_modules.transfer.Transfer``; ``word_dropout``: see ``with_word_dropout``;
        ``architecture``: the keyword arguments of ``zoo.SequenceTagger`` (sizes, cell, output...)."""
        super().__init__()
        if distill_on not in ("emissions", "marginals"):
            raise ValueError(f"distill_on must be 'emissions' or 'marginals', got {distill_on!r}")
        if distill_on == "marginals" and architecture.get("output", "crf") != "crf":
            raise ValueError("distill_on='marginals' needs a CRF student (output: crf)")
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.save_hyperparameters()
        self.distillation = distillation_from(teacher, temperature, alpha)
        self.transfer = transfer_from(encoder_from, pretrained_embeddings, freeze_embeddings)
        self.network_arguments = {
            "vocab_size": vocab_size,
            "labels": list(labels),
            "char_vocab_size": char_vocab_size,
            **architecture,
        }
        self.net = SequenceTagger(vocab_size, labels, char_vocab_size=char_vocab_size, **architecture)
        self._gold: list[list[str]] = []
        self._predicted: list[list[str]] = []

    def fit_extensions(self) -> tuple:
        return tuple(extension for extension in (self.transfer, self.distillation) if extension is not None)

    def forward(self, batch) -> torch.Tensor:
        return self.net(batch["input_ids"], batch["lengths"], batch.get("chars"), batch.get("char_lengths"))

    @staticmethod
    def _mask(batch) -> torch.Tensor:
        steps = torch.arange(batch["input_ids"].size(1), device=batch["lengths"].device)
        return steps.unsqueeze(0) < batch["lengths"].unsqueeze(1)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        teacher = self.distillation and self.distillation.teacher
        if teacher is not None and self.hparams.distill_on == "marginals" and teacher.net.crf is None:
            raise ValueError(f"distill_on='marginals' needs a CRF teacher; {self.distillation.source} has none")

    def training_step(self, batch, batch_idx):
        emissions, mask = self(self.with_word_dropout(batch)), self._mask(batch)
        loss = self.net.loss(emissions, batch["tags"], mask)
        if self.distillation is not None:
            loss = self._distill(loss, batch, emissions, mask)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["lengths"]))
        return loss

    def _distill(self, loss: torch.Tensor, batch, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        distillation = self.distillation
        inputs = (batch["input_ids"], batch["lengths"], batch.get("chars"), batch.get("char_lengths"))
        teacher = distillation.outputs(self.device, *inputs)
        if self.hparams.distill_on == "emissions":
            return distillation.loss(loss, emissions, teacher, mask)
        t = distillation.temperature
        log_teacher = distillation.teacher.net.crf.marginals(teacher, mask, t).clamp_min(1e-12).log()
        log_student = self.net.crf.marginals(emissions, mask, t).clamp_min(1e-12).log()
        return distillation.mix(loss, t**2 * kl_per_position(log_student, log_teacher, mask))

    def _collect(self, batch, prefix: str) -> None:
        mask = self._mask(batch)
        emissions = self(batch)
        loss = self.net.loss(emissions, batch["tags"], mask)
        self.log(f"{prefix}_loss", loss, batch_size=len(batch["lengths"]))
        predicted = self.net.decode(emissions, mask)
        labels = self.hparams.labels
        for row, n in enumerate(batch["lengths"].tolist()):
            self._gold.append([labels[t] for t in batch["tags"][row, :n].tolist()])
            self._predicted.append([labels[t] for t in predicted[row, :n].tolist()])

    def validation_step(self, batch, batch_idx):
        self._collect(batch, "val")

    def test_step(self, batch, batch_idx):
        self._collect(batch, "test")

    def _report(self, prefix: str) -> None:
        gold, predicted = self._gold, self._predicted
        self._gold, self._predicted = [], []
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (gold, predicted))
            gold = [s for g, _ in gathered for s in g]
            predicted = [s for _, p in gathered for s in p]
        tokens = sum(len(s) for s in gold)
        correct = sum(g == p for gs, ps in zip(gold, predicted, strict=True) for g, p in zip(gs, ps, strict=True))
        metrics = {f"{prefix}_token_acc": correct / max(tokens, 1), f"{prefix}_sentences": float(len(gold))}
        if is_iob2(self.hparams.labels):
            strict = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
            metrics[f"{prefix}_f1"] = f1_score(gold, predicted, **strict)
            metrics[f"{prefix}_precision"] = precision_score(gold, predicted, **strict)
            metrics[f"{prefix}_recall"] = recall_score(gold, predicted, **strict)
            if prefix == "test":
                per_type = classification_report(gold, predicted, output_dict=True, **strict)
                metrics |= {f"test_f1_{t}": v["f1-score"] for t, v in per_type.items() if " avg" not in t}
        self.log_dict(metrics, prog_bar=prefix == "val", rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def predict_step(self, batch, batch_idx):
        return self.predict(batch["words"])

    def tag(self, sentences: list[str] | list[list[str]]) -> list[dict]:
        """Tags of raw sentences, a string split on whitespace (``zoo.common.predict.tagging.Tagging``)."""
        return self.predict(sentences)

    @torch.no_grad()
    def tag_ids(self, sentences: list[list[str]]) -> list[list[int]]:
        """Each sentence's tag ids, its words encoded by ``zoo.common.text`` as at every entry point."""
        chars = self.get_tokenizer("char_tokenizer") if "char_tokenizer" in self.tokenizer_jsons else None
        encoded = text.encode_words(self.tokenizer, chars, sentences)
        batch = CoNLLDataModule.collate([(ids, word_chars, [0] * len(ids)) for ids, word_chars in encoded])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        predicted = self.net.decode(self(batch), self._mask(batch))
        return [predicted[row, : len(words)].tolist() for row, words in enumerate(sentences)]
