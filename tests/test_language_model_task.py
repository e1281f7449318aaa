import math
import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from datamodules import PTBDataModule
from lightning_modules import LanguageModelTask

CLIP = 0.01


class RecordingSGD(torch.optim.SGD):
    """SGD that records the gradient norm it is asked to step with (after Lightning's clipping)."""

    norms: list[float] = []

    def step(self, closure=None):
        loss = closure()
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        RecordingSGD.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        super().step()
        return loss


class Task(LanguageModelTask):
    def configure_optimizers(self):
        return RecordingSGD(self.parameters(), lr=20.0)


def trainer(tmp_path, **kwargs):
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kwargs})


def small_task(dm, **kwargs):
    torch.manual_seed(0)
    return Task(dm.vocab_size, embedding_dim=8, hidden_size=16, num_layers=1, **kwargs)


def test_validation_perplexity_is_token_weighted_over_the_whole_split(tmp_path, synthetic_corpus):
    dm = PTBDataModule(data_dir=str(synthetic_corpus), batch_size=4, eval_batch_size=3, bptt=5)
    task = small_task(dm)
    metrics = trainer(tmp_path).validate(task, dm, verbose=False)[0]

    stream = dm.streams["validation"]  # reference: one sequence, one pass, every token once
    with torch.no_grad():
        logits, _ = task.net.eval()(stream[None, :-1])
    expected = F.cross_entropy(logits[0], stream[1:]).item()
    # rows start from a zero state, so the reference (one row) differs slightly; the mean of the
    # per-batch perplexities, which the metric must not be, would differ much more.
    assert metrics["val_loss"] == pytest.approx(expected, rel=0.02)
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]), rel=1e-5)

    one_row = PTBDataModule(data_dir=str(synthetic_corpus), eval_batch_size=1, bptt=7)
    exact = trainer(tmp_path).validate(task, one_row, verbose=False)[0]
    assert exact["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_state_is_carried_across_windows_and_reset_each_epoch(synthetic_corpus):
    dm = PTBDataModule(data_dir=str(synthetic_corpus), batch_size=2, bptt=4)
    dm.setup("fit")
    task = small_task(dm).eval()
    first, second = list(dm.train_dataloader())[:2]
    with torch.no_grad():
        task.on_train_epoch_start()
        nll_first, n_first, _ = task._nll(first, "train")
        nll_second, n_second, _ = task._nll(second, "train")
        logits, _ = task.net(torch.cat([first[0], second[0]], 1))
        joint = F.cross_entropy(logits.flatten(0, 1), torch.cat([first[1], second[1]], 1).flatten(), reduction="sum")
        torch.testing.assert_close(nll_first + nll_second, joint)
        task.on_train_epoch_start()
        assert "train" not in task._states


def test_sum_over_time_loss_is_the_token_mean_times_steps(synthetic_corpus):
    dm = PTBDataModule(data_dir=str(synthetic_corpus), batch_size=2, bptt=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    losses = {}
    for reduction in ("token_mean", "sum_over_time"):
        task = small_task(dm, loss_reduction=reduction)
        task.log = lambda *args, **kwargs: None
        losses[reduction] = task.training_step(batch, 0)
    torch.testing.assert_close(losses["sum_over_time"], losses["token_mean"] * 4)


def test_gradients_are_clipped_by_norm(tmp_path, synthetic_corpus):
    dm = PTBDataModule(data_dir=str(synthetic_corpus), batch_size=4, bptt=5)
    RecordingSGD.norms.clear()
    trainer(tmp_path, max_steps=5, gradient_clip_val=CLIP, limit_val_batches=0).fit(small_task(dm), dm)
    assert len(RecordingSGD.norms) == 5
    assert max(RecordingSGD.norms) <= CLIP * 1.0001


def test_checkpoint_carries_the_tokenizer_and_refuses_another_vocabulary(tmp_path, synthetic_corpus):
    dm = PTBDataModule(data_dir=str(synthetic_corpus), batch_size=4, bptt=5)
    fit = trainer(tmp_path, max_steps=3, limit_val_batches=0)
    fit.fit(small_task(dm), dm)
    ckpt = tmp_path / "model.ckpt"
    fit.save_checkpoint(ckpt)

    restored = LanguageModelTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert restored.tokenizer.get_vocab() == dm.tokenizer.get_vocab()
    text = restored.generate("w1 w2", max_new_tokens=5, temperature=0)
    assert text.startswith("w1 w2")

    other = PTBDataModule(data_dir=str(synthetic_corpus), max_samples=3, batch_size=4, bptt=5)
    with pytest.raises(ValueError, match="vocabulary"):
        trainer(tmp_path).validate(
            Task(dm.vocab_size, embedding_dim=8, hidden_size=16, num_layers=1), other, ckpt_path=ckpt
        )


def test_character_models_report_bits_per_character(tmp_path, synthetic_corpus):
    from tests.conftest import REPO, rnnzoo

    config = REPO / "zoo" / "configs" / "ptb_char_lstm.yaml"
    small = "--model.init_args.hidden_size 16 --model.init_args.embedding_dim 8 --model.init_args.num_layers 1"
    result = rnnzoo(
        tmp_path, "validate", "--config", str(config), "--data.data_dir", str(synthetic_corpus),
        *small.split(), "--data.bptt", "20", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    metrics = {name: float(value) for name, value in re.findall(r"(val_\w+)\s+([\d.]+)", result.stdout)}
    assert metrics["val_bpc"] == pytest.approx(metrics["val_loss"] / math.log(2), rel=1e-4)
    word_level = rnnzoo(
        tmp_path, "validate", "--config", str(REPO / "zoo" / "configs" / "ptb_lstm_small.yaml"),
        "--data.data_dir", str(synthetic_corpus), *small.split(), "--trainer.logger", "false",
    )  # fmt: skip
    assert "val_ppl" in word_level.stdout and "val_bpc" not in word_level.stdout
