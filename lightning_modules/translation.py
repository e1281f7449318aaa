"""Translation task: teacher-forced cross-entropy, perplexity, sacreBLEU and chrF on detokenized output."""

import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
import sacrebleu
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchmetrics import MeanMetric

from lightning_modules.distillation import distillation_from
from lightning_modules.task_module import TaskModule
from zoo.common import decoding, text
from zoo.common.predict.translation import TranslationOptions
from zoo.networks.seq2seq import Seq2Seq, translate_ids


class TranslationTask(TaskModule):
    """Trains a ``zoo.Seq2Seq``; vocabulary sizes and ``language_pair`` come from the datamodule.

    Validation reports token-weighted loss/perplexity and greedy BLEU; test decodes with
    ``beam_size`` (1 = greedy) and reports sacreBLEU and chrF against the raw references, printing
    sacreBLEU's signature.

    Args:
        label_smoothing: of the training loss (validation/test loss is plain cross-entropy).
        teacher_forcing: probability of feeding the reference token during training (< 1:
            scheduled sampling).
        beam_size, length_penalty, max_new_tokens: test-time and ``translate`` decoding
            (``max_new_tokens`` None: twice the source length plus 10; ``max_decode_length`` is its
            old name, still accepted).
        teacher, temperature, alpha: word-level knowledge distillation (Kim & Rush 2016): the
            student also learns the teacher's next-word distribution at each reference step (see
            ``lightning_modules.distillation``). Sequence-level distillation trains on the teacher's
            beam translations instead: ``rnnzoo distill-data``.
    """

    checked_hparams = ("language_pair",)

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        language_pair: str = "",
        label_smoothing: float = 0.0,
        teacher_forcing: float = 1.0,
        beam_size: int = decoding.BEAM_SIZE,
        length_penalty: float = decoding.LENGTH_PENALTY,
        max_new_tokens: int | None = None,
        max_decode_length: int | None = None,
        teacher: str | None = None,
        temperature: float = 1.0,
        alpha: float = 0.5,
        **architecture,
    ):
        """``architecture``: the keyword arguments of ``zoo.Seq2Seq`` (sizes, cell, context, attention...)."""
        super().__init__()
        if max_decode_length is not None:
            warnings.warn("max_decode_length is deprecated: use max_new_tokens", DeprecationWarning, stacklevel=2)
            max_new_tokens = max_new_tokens or max_decode_length
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing must be in [0, 1], got {teacher_forcing}")
        self.save_hyperparameters(ignore="max_decode_length")
        self.hparams.max_new_tokens = max_new_tokens
        self.distillation = distillation_from(teacher, temperature, alpha)
        self.network_arguments = {
            "source_vocab_size": source_vocab_size,
            "target_vocab_size": target_vocab_size,
            **architecture,
        }
        self.net = Seq2Seq(source_vocab_size, target_vocab_size, **architecture)
        self.val_nll, self.test_nll = MeanMetric(), MeanMetric()
        self._outputs: list[tuple[int, str, str]] = []
        self.bleu_signature = ""

    @cached_property
    def _special_ids(self) -> tuple[int, int]:
        tokenizer = self.get_tokenizer("target_tokenizer")
        return tokenizer.token_to_id("<bos>"), tokenizer.token_to_id("<eos>")

    def fit_extensions(self) -> tuple:
        return () if self.distillation is None else (self.distillation,)

    def forward(self, source, lengths, target_in, teacher_forcing: float = 1.0) -> torch.Tensor:
        return self.net(source, lengths, target_in, teacher_forcing)

    def training_step(self, batch, batch_idx):
        logits = self(batch["source"], batch["lengths"], batch["target_in"], self.hparams.teacher_forcing)
        loss = F.cross_entropy(
            logits.flatten(0, 1), batch["target_out"].flatten(), label_smoothing=self.hparams.label_smoothing
        )
        if self.distillation is not None:  # word-level: the teacher's next word at each reference step
            inputs = (batch["source"], batch["lengths"], batch["target_in"])
            teacher_logits = self.distillation.outputs(self.device, *inputs)
            loss = self.distillation.loss(loss, logits, teacher_logits, batch["target_out"] != text.IGNORE_INDEX)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["lengths"]))
        return loss

    def _nll(self, batch, metric: MeanMetric) -> None:
        logits = self(batch["source"], batch["lengths"], batch["target_in"])
        targets = batch["target_out"].flatten()
        tokens = (targets != text.IGNORE_INDEX).sum()
        metric.update(F.cross_entropy(logits.flatten(0, 1), targets), weight=tokens)

    def decode(self, source, lengths, beam_size: int) -> list[list[int]]:
        bos, eos = self._special_ids
        hp = self.hparams
        return translate_ids(self.net, source, lengths, bos, eos, beam_size, hp.max_new_tokens, hp.length_penalty)

    def _translate_batch(self, batch, beam_size: int) -> None:
        tokenizer = self.get_tokenizer("target_tokenizer")
        hypotheses = tokenizer.decode_batch(self.decode(batch["source"], batch["lengths"], beam_size))
        self._outputs += list(zip(batch["ids"], hypotheses, batch["references"], strict=True))

    def validation_step(self, batch, batch_idx):
        self._nll(batch, self.val_nll)
        self._translate_batch(batch, beam_size=1)

    def test_step(self, batch, batch_idx):
        self._nll(batch, self.test_nll)
        self._translate_batch(batch, self.hparams.beam_size)

    def _report(self, prefix: str, metric: MeanMetric) -> None:
        nll = metric.compute()
        metric.reset()
        outputs, self._outputs = self._outputs, []
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, outputs)
            outputs = [row for rank_rows in gathered for row in rank_rows]
        by_id = dict((i, (hypothesis, reference)) for i, hypothesis, reference in outputs)  # DDP repeats some
        hypotheses = [by_id[i][0] for i in sorted(by_id)]
        references = [by_id[i][1] for i in sorted(by_id)]
        bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
        metrics = {
            f"{prefix}_loss": nll,
            f"{prefix}_ppl": nll.exp(),
            f"{prefix}_bleu": bleu.corpus_score(hypotheses, [references]).score,
            f"{prefix}_chrf": chrf.corpus_score(hypotheses, [references]).score,
        }
        self.log_dict(metrics, prog_bar=prefix == "val", sync_dist=False)
        if prefix == "test":
            self.bleu_signature = str(bleu.get_signature())
            if self.trainer.is_global_zero:
                beam = self.hparams.beam_size
                print(f"sacreBLEU signature: {self.bleu_signature} (beam {beam}, {len(by_id)} sentences)")

    def on_validation_epoch_end(self) -> None:
        self._report("val", self.val_nll)

    def on_test_epoch_end(self) -> None:
        self._report("test", self.test_nll)

    def predict_step(self, batch, batch_idx):
        return self.predict(batch["texts"])

    # -- inference outside the trainer ------------------------------------------------------------
    def encode_sources(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded source ids ``(B, S)`` ending in ``<eos>`` and their lengths (``zoo.common.text``)."""
        tokenizer = self.get_tokenizer("source_tokenizer")
        source, lengths = text.pad(text.encode(tokenizer, texts, end=text.EOS), text.pad_id(tokenizer))
        return torch.from_numpy(source).to(self.device), torch.from_numpy(lengths)

    def translate(self, texts: list[str], beam_size: int | None = None) -> list[str]:
        """Translations of raw sentences (``beam_size`` defaults to the task's); ``predict`` gives the
        records (``zoo.common.predict.translation.Translation``)."""
        return [record["translation"] for record in self.predict(texts, TranslationOptions(beam_size=beam_size))]

    def require_attention(self) -> None:
        if self.net.attention is None:
            raise ValueError("this model has no attention weights to return: its decoder reads no attention")

    def _padded(self, sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        source, lengths = text.pad(sources, text.pad_id(self.get_tokenizer("source_tokenizer")))
        return torch.from_numpy(source).to(self.device), torch.from_numpy(lengths)

    @torch.no_grad()
    def translate_ids(self, sources: list[list[int]], beam_size: int, max_new_tokens: int) -> list[list[int]]:
        """Target ids of source ids ending in ``<eos>`` (``zoo.networks.seq2seq.translate_ids``)."""
        bos, eos = self._special_ids
        source, lengths = self._padded(sources)
        hp = self.hparams
        return translate_ids(self.net, source, lengths, bos, eos, beam_size, max_new_tokens, hp.length_penalty)

    @torch.no_grad()
    def attention_weights(self, sources: list[list[int]], targets: list[list[int]]) -> list[np.ndarray]:
        """Per text, the attention ``(target tokens + 1, source tokens)`` of the decoder reading its
        target back (teacher forcing), as ``deploy.tasks.translation.TranslatorPredictor.attention_weights``."""
        bos, eos = self._special_ids
        source, lengths = self._padded(sources)
        memory, state = self.net.encode(source, lengths)
        steps = 1 + max(map(len, targets))
        previous = torch.full((len(targets), steps), eos, dtype=torch.long, device=self.device)
        previous[:, 0] = bos
        for row, target in enumerate(targets):
            previous[row, 1 : 1 + len(target)] = torch.tensor(target, dtype=torch.long)
        seen = []
        for t in range(steps):
            _, state, weights = self.net.decode_step(previous[:, t], state, memory)
            seen.append(weights.float().cpu().numpy())
        seen = np.stack(seen, 1)
        return [seen[row, : 1 + len(target), : len(sources[row])] for row, target in enumerate(targets)]

    @torch.no_grad()
    def plot_attention(self, source_text: str, path: str | Path) -> str:
        """Greedy-translate ``source_text`` and save its attention weights (source x target) as a PNG."""
        if self.net.attention is None:
            raise ValueError("this model has no attention (context is not 'attention')")
        self.eval()
        source, lengths = self.encode_sources([source_text])
        bos, eos = self._special_ids
        steps: list = []
        (hypothesis,) = translate_ids(
            self.net, source, lengths, bos, eos, 1, self.hparams.max_new_tokens, attention=steps
        )
        weights = torch.from_numpy(np.stack([step[0] for step in steps])[: len(hypothesis) + 1])
        source_tokens = [self.get_tokenizer("source_tokenizer").id_to_token(i) for i in source[0].tolist()]
        target = self.get_tokenizer("target_tokenizer")
        target_tokens = [target.id_to_token(i) for i in hypothesis] + [text.EOS]
        save_attention_heatmap(weights[: len(target_tokens)], source_tokens, target_tokens[: len(weights)], path)
        return target.decode(hypothesis)


def save_attention_heatmap(weights: torch.Tensor, source: list[str], target: list[str], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(source)), max(3, 0.4 * len(target))))
    ax.imshow(weights.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(source)))
    ax.set_xticklabels(source, rotation=60, ha="right")
    ax.set_yticks(range(len(target)))
    ax.set_yticklabels(target)
    ax.set(xlabel="source", ylabel="translation")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
