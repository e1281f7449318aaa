"""Language modelling task: truncated BPTT over a contiguous stream, token-weighted perplexity."""

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torchmetrics import MeanMetric

from lightning_modules.distillation import distillation_from
from lightning_modules.task_module import TaskModule
from zoo.cells.recurrent import detach_state
from zoo.common import allocator, decoding, text
from zoo.common.predict.language_model import GenerationOptions
from zoo.common.text import IGNORE_INDEX
from zoo.networks.language_model import RNNLanguageModel
from zoo.networks.language_model import generate as generate_ids


class LanguageModelTask(TaskModule):
    """Trains a ``zoo.RNNLanguageModel``.

    Args:
        vocab_size: linked from the datamodule by the CLI.
        level: ``word`` or ``char``, linked from the datamodule; character-level models also log
            bits per character, ``{val,test}_bpc`` = log2(e) x the mean negative log-likelihood.
        loss_reduction: ``token_mean`` averages the loss over tokens (pytorch/examples: lr 20,
            clip 0.25); ``sum_over_time`` sums over time steps and averages over the batch as
            Zaremba et al. (2014) did, so their lr 1 / clip 5 carry over unchanged.

    The hidden state is carried from one batch to the next and detached (truncated BPTT); it is
    reset at the start of every epoch. Checkpoints hold it with the random state, so a run resumed
    in the middle of an epoch continues exactly where it stopped. Validation/test perplexity is exp
    of the token-weighted mean negative log-likelihood over the whole split (synchronised across DDP
    ranks).

    With a ``teacher`` (``lightning_modules.distillation``) the student also learns the teacher's
    next-token distribution at every position; the teacher carries its own state across windows.
    """

    def __init__(
        self,
        vocab_size: int,
        level: Literal["word", "char"] = "word",
        loss_reduction: Literal["token_mean", "sum_over_time"] = "token_mean",
        teacher: str | None = None,
        temperature: float = 1.0,
        alpha: float = 0.5,
        **architecture,
    ):
        """``teacher``, ``temperature``, ``alpha``: see ``lightning_modules.distillation.Distillation``;
        ``architecture``: the keyword arguments of ``zoo.RNNLanguageModel`` (cell, sizes, dropout...)."""
        super().__init__()
        if loss_reduction not in ("token_mean", "sum_over_time"):
            raise ValueError(f"loss_reduction must be 'token_mean' or 'sum_over_time', got {loss_reduction!r}")
        if level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char', got {level!r}")
        self.save_hyperparameters()
        self.distillation = distillation_from(teacher, temperature, alpha)
        self.network_arguments = {"vocab_size": vocab_size, **architecture}
        self.net = RNNLanguageModel(vocab_size, **architecture)
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()
        self._states: dict[str, object] = {}
        self._resumed: dict | None = None  # a loaded checkpoint's training state, until training starts

    # -- steps -----------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, state=None):
        return self.net(tokens, state)

    def _nll(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed negative log-likelihood and token count of one window, carrying the state; its logits."""
        inputs, targets = batch
        logits, state = self.net(inputs, self._states.get(stage))
        self._states[stage] = detach_state(state)
        nll_sum = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return nll_sum, (targets != IGNORE_INDEX).sum(), logits

    def _reset_state(self, stage: str) -> None:
        self._states.pop(stage, None)

    def on_train_epoch_start(self) -> None:
        self._reset_state("train")
        self._reset_state("teacher")

    def on_validation_epoch_start(self) -> None:
        self._reset_state("val")

    def on_test_epoch_start(self) -> None:
        self._reset_state("test")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # A character-aware model reads its vocabulary's words; a checkpoint or folder brings them along.
        if self.net.char_cnn is not None and not self.net.word_chars.any() and "tokenizer" in self.tokenizer_jsons:
            tokenizer = Tokenizer.from_str(self.tokenizer_jsons["tokenizer"])
            self.net.set_words([tokenizer.id_to_token(i) for i in range(self.net.vocab_size)])

    def fit_extensions(self) -> tuple:
        return () if self.distillation is None else (self.distillation,)

    def on_fit_start(self) -> None:
        if self.device.type == "cpu":
            allocator.keep_freed_memory()  # a CPU step's large buffers stay for the next one

    def on_train_start(self) -> None:
        """A resumed run: the carried state of a mid-epoch checkpoint (Lightning calls no
        ``on_train_epoch_start`` for the epoch it resumes) and the random state at the save."""
        if self._resumed is not None:
            if self._resumed["state"] is not None:
                self._states["train"] = self._resumed["state"]
            set_rng_states(self._resumed["rng"])
            self._resumed = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        mid_epoch = 0 < done < self.trainer.num_training_batches
        checkpoint["train_carry"] = {"state": self._states.get("train") if mid_epoch else None, "rng": rng_states()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._resumed = checkpoint.get("train_carry")

    def training_step(self, batch, batch_idx):
        nll_sum, count, logits = self._nll(batch, "train")
        token_mean = nll_sum / count.clamp(min=1)
        if self._loggers_write_this_step():
            self.log("train_loss", token_mean, prog_bar=True)
            self.log("train_ppl", token_mean.exp(), prog_bar=True)
        loss = token_mean if self.distillation is None else self._distill(token_mean, batch, logits)
        if self.hparams.loss_reduction == "sum_over_time":
            return loss * count / batch[0].size(0)  # the sum over time steps, averaged over the batch
        return loss

    def _distill(self, token_mean: torch.Tensor, batch, logits: torch.Tensor) -> torch.Tensor:
        inputs, targets = batch
        teacher_logits, state = self.distillation.outputs(self.device, inputs, self._states.get("teacher"))
        self._states["teacher"] = state
        return self.distillation.loss(token_mean, logits, teacher_logits, targets != IGNORE_INDEX)

    def _loggers_write_this_step(self) -> bool:
        """Whether Lightning passes this step's values to the loggers (every ``log_every_n_steps``).

        Only those steps log the training loss: ``self.log`` costs about 0.4 ms of Python per call
        (the two calls took 2% of a PTB-small step on a 2-core CPU) and the progress bar reads each
        value it shows back to the host, so the bar shows the loss of the last logged step."""
        try:
            every = self.trainer.log_every_n_steps
        except RuntimeError:  # not attached to a Trainer, where self.log does nothing either
            return False
        return every > 0 and (self.global_step + 1) % every == 0

    def validation_step(self, batch, batch_idx):
        nll_sum, count, _ = self._nll(batch, "val")
        self.val_nll.update(nll_sum / count.clamp(min=1), weight=count)

    def test_step(self, batch, batch_idx):
        nll_sum, count, _ = self._nll(batch, "test")
        self.test_nll.update(nll_sum / count.clamp(min=1), weight=count)

    def _log_split(self, metric: MeanMetric, prefix: str) -> None:
        nll = metric.compute()
        self.log(f"{prefix}_loss", nll)
        self.log(f"{prefix}_ppl", nll.exp(), prog_bar=True)
        if self.hparams.level == "char":
            self.log(f"{prefix}_bpc", nll / math.log(2))
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_split(self.val_nll, "val")

    def on_test_epoch_end(self) -> None:
        self._log_split(self.test_nll, "test")

    # -- inference -------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str = "",
        max_new_tokens: int = decoding.MAX_NEW_TOKENS,
        temperature: float = decoding.TEMPERATURE,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> str:
        """``prompt`` and its continuation (a new sentence when empty): stops at ``<eos>`` or after
        ``max_new_tokens``; ``predict`` gives the records (``zoo.common.predict.language_model.Continuation``)."""
        (record,) = self.predict([prompt], GenerationOptions(max_new_tokens, temperature, top_k, seed))
        return record["continuation"]

    def generate_text(self, *args, **kwargs) -> str:
        """Deprecated: ``generate`` (the same arguments), the name the exported model has too."""
        warnings.warn("generate_text is deprecated, use generate", DeprecationWarning, stacklevel=2)
        return self.generate(*args, **kwargs)

    @torch.no_grad()
    def continue_ids(self, prompt_ids: list[int], options: GenerationOptions) -> list[int]:
        eos = text.special_id(self.tokenizer, text.EOS)
        o = options
        return generate_ids(self.net, prompt_ids, o.max_new_tokens, o.temperature, o.top_k, eos, o.seed)


def rng_states() -> list[torch.Tensor]:
    """The CPU generator's state, then each CUDA device's (dropout draws from them)."""
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])]


def set_rng_states(states: list[torch.Tensor]) -> None:
    torch.set_rng_state(states[0])
    if len(states) > 1 and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states[1:])
