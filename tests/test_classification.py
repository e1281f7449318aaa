import logging

import datasets
import lightning as L
import pytest
import torch

from datamodules import DataError, IMDBDataModule
from datamodules.batching import BucketedBatches, bucket_batches
from lightning_modules import ClassificationTask
from lightning_modules.task_io import publish, task_from_pretrained
from zoo import SequenceClassifier
from zoo.networks.pooling import POOLINGS, AttentionPooling, pool, valid_mask

LABELS = ["neg", "pos"]


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "gated"])
def test_pooling_ignores_padding(pooling, cell):
    torch.manual_seed(0)
    model = SequenceClassifier(30, 3, 8, 6, num_layers=2, cell=cell, bidirectional=True, pooling=pooling).eval()
    tokens, lengths = torch.randint(1, 30, (3, 9)), torch.tensor([9, 4, 6])
    tokens[1, 4:] = 0
    batched = model(tokens, lengths)
    for row, n in enumerate(lengths.tolist()):
        alone = model(tokens[row : row + 1, :n], lengths[row : row + 1])
        torch.testing.assert_close(batched[row], alone[0])


def test_concat_pooling_is_the_last_state_the_max_and_the_mean_side_by_side():
    outputs = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [9.0, 9.0]]])  # the third step is padding
    state = torch.tensor([[[5.0, 6.0]]])  # (layers x directions, B, H)
    pooled = pool("concat", outputs, torch.tensor([2]), state, num_directions=1)
    torch.testing.assert_close(pooled, torch.tensor([[5.0, 6.0, 3.0, 0.0, 2.0, -1.0]]))
    model = SequenceClassifier(30, 2, 8, 6, bidirectional=True, pooling="concat")
    assert model.classifier.in_features == 3 * 2 * 6


def test_attention_weights_cover_only_valid_steps():
    torch.manual_seed(0)
    lengths = torch.tensor([5, 2])
    _, weights = AttentionPooling(4)(torch.randn(2, 5, 4), valid_mask(lengths, 5))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert (weights[1, 2:] == 0).all()


def test_bucketed_batches_sort_eval_and_shard_ranks():
    lengths = [5, 1, 9, 3, 7, 2, 8]
    assert bucket_batches(lengths, 3, shuffle=False) == [[2, 6, 4], [0, 3, 5], [1]]
    train = bucket_batches(lengths, 2, shuffle=True, seed=1)
    assert sorted(i for batch in train for i in batch) == list(range(7))
    ranks = [list(BucketedBatches(list(range(7)), lengths, 2, list, True, 0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}


def synthetic_reviews(folder, n=120, long_every=10):
    """Reviews whose sentiment is the word 'good' or 'bad'; every `long_every`-th one is long."""
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABELS)})
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rows = {"text": [], "label": []}
        for i in range(n):
            label = i % 2
            filler = " filler" * (50 if i % long_every == 0 else 3)
            rows["text"].append(f"A movie.<br />It was {'good' if label else 'bad'}{filler}")
            rows["label"].append(label)
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    return folder


def test_datamodule_labels_split_and_tokenizer(tmp_path, caplog):
    dm = IMDBDataModule(data_dir=str(synthetic_reviews(tmp_path / "r")), val_size=20, max_length=20, batch_size=8)
    assert dm.labels == LABELS and dm.num_classes == 2
    assert len(dm.splits["validation"]) == 20 and sum(dm.splits["validation"]["label"]) == 10  # stratified
    assert "<br" not in dm.tokenizer.get_vocab() and "good" in dm.tokenizer.get_vocab()
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "exceed max_length=20" in caplog.text
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["lengths"].max() <= 20
    assert set(batch["labels"].tolist()) <= {0, 1}


def test_datamodule_refuses_bad_labels(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for split in ("train", "test"):
        datasets.Dataset.from_dict({"text": ["a", "b"] * 10, "label": [0, 1] * 10}).to_parquet(
            str(folder / f"{split}.parquet")
        )
    with pytest.raises(DataError, match="not a ClassLabel"):
        IMDBDataModule(data_dir=str(folder), val_size=4).prepare_data()
    with pytest.raises(DataError, match="val_size=1 must be at least the number of classes"):
        IMDBDataModule(data_dir=str(synthetic_reviews(tmp_path / "r")), val_size=1).prepare_data()
    with pytest.raises(DataError, match="no column 'stars'"):
        IMDBDataModule(data_dir=str(folder), label_column="stars").prepare_data()


class Task(ClassificationTask):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_trains_tests_and_refuses_other_labels(tmp_path):
    dm = IMDBDataModule(data_dir=str(synthetic_reviews(tmp_path / "r")), val_size=20, batch_size=8)
    torch.manual_seed(0)
    task = Task(dm.vocab_size, dm.labels, embedding_dim=16, hidden_size=16, pooling="mean")
    trainer = L.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(task, dm)
    metrics = trainer.test(task, dm, verbose=False)[0]
    assert metrics["test_acc"] > 0.9  # the label is one word in the text: learnable
    rows = task.classify(["A movie. It was good", "A movie.<br />It was bad filler"])
    assert [row["label"] for row in rows] == ["pos", "neg"] and all(row["probability"] > 0.5 for row in rows)
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0

    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = task_from_pretrained(publish(ckpt, tmp_path / "pretrained", metrics=metrics))
    batch = next(iter(dm.test_dataloader()))
    expected = task.eval()(batch["input_ids"], batch["lengths"])
    torch.testing.assert_close(restored(batch["input_ids"], batch["lengths"]), expected)
    assert restored.tokenizer.get_vocab() == dm.tokenizer.get_vocab() and restored.hparams.labels == LABELS

    other = Task(dm.vocab_size, ["negative", "positive"], embedding_dim=16, hidden_size=16, pooling="mean")
    with pytest.raises(ValueError, match=r"\['neg', 'pos'\].*\['negative', 'positive'\]"):
        L.Trainer(logger=False).test(other, dm, ckpt_path=ckpt)


def test_word_dropout_turns_training_words_into_unk_and_leaves_evaluation_alone():
    from tests.test_transfer import classifier

    task = classifier(word_dropout=0.3)
    unk = task.tokenizer.token_to_id("<unk>")
    batch = {"input_ids": torch.randint(2, 20, (50, 40)), "lengths": torch.full((50,), 40)}
    torch.manual_seed(0)
    dropped = task.train().with_word_dropout(batch)["input_ids"]
    changed = dropped != batch["input_ids"]
    assert (dropped[changed] == unk).all() and 0.27 < changed.float().mean() < 0.33
    assert task.eval().with_word_dropout(batch) is batch
    assert classifier().train().with_word_dropout(batch) is batch
    with pytest.raises(ValueError, match=r"word_dropout must be in \[0, 1\)"):
        classifier(word_dropout=1.0)
