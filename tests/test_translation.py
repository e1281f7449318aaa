import json
import logging
import random
import re
from types import SimpleNamespace

import datasets
import lightning as L
import pytest
import torch

from datamodules import DataError, TranslationDataModule
from lightning_modules import TranslationTask

WORDS = 12


def synthetic_pairs(folder, rows=(("train", 300), ("validation", 40), ("test", 40)), seed=0, nested=False):
    """'German' sentences of words gI and their 'English' translation: words eI in reverse order."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in rows:
        de, en = [], []
        for i in range(n):
            words = rng.choices(range(WORDS), k=rng.randint(1, 6))
            de.append(" ".join(f"g{w}" for w in words) + f" n{i}{split[0]}" * (i == 0) + ".")
            en.append(" ".join(f"e{w}" for w in reversed(words)) + ".")
        columns = (
            {"translation": [{"de": d, "en": e} for d, e in zip(de, en, strict=True)]}
            if nested
            else {
                "de": de,
                "en": en,
            }
        )
        datasets.Dataset.from_dict(columns).to_parquet(str(folder / f"{split}.parquet"))
    return folder


def datamodule(folder, **kwargs):
    kwargs = {"tokenizer": "word", "min_frequency": 1, "batch_size": 16} | kwargs
    return TranslationDataModule(data_dir=str(folder), **kwargs)


def test_batches_hold_source_eos_and_shifted_targets(tmp_path):
    dm = datamodule(synthetic_pairs(tmp_path / "d"))
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    eos, bos = dm.source_tokenizer.token_to_id("<eos>"), dm.target_tokenizer.token_to_id("<bos>")
    for row, n in enumerate(batch["lengths"].tolist()):
        assert batch["source"][row, n - 1] == eos and (batch["source"][row, n:] == 0).all()
    assert (batch["target_in"][:, 0] == bos).all()
    target_eos = dm.target_tokenizer.token_to_id("<eos>")
    for target_in, target_out in zip(batch["target_in"], batch["target_out"], strict=True):
        n = int((target_out != -100).sum())  # target_out is target_in shifted left by one, ending in <eos>
        assert torch.equal(target_in[1:n], target_out[: n - 1]) and target_out[n - 1] == target_eos
    text = batch["references"][0]
    ids = batch["target_out"][0][batch["target_out"][0] >= 0].tolist()
    assert dm.target_tokenizer.decode(ids[:-1]) == text  # decoding restores the raw reference


def test_tokenizers_from_a_pretrained_model_replace_fitting(tmp_path):
    data = synthetic_pairs(tmp_path / "d")
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    fitted = datamodule(data)
    (pretrained / "config.json").write_text(
        json.dumps(
            {
                "format_version": 2,
                "architecture": "Seq2Seq",
                "arguments": {},
                "task": "translation",
                "task_arguments": {},
                "tokenizers": {"source_tokenizer": "s.json", "target_tokenizer": "t.json"},
            }
        )
    )
    fitted.target_tokenizer.save(str(pretrained / "s.json"))  # swapped sides: visibly not fitted anew
    fitted.source_tokenizer.save(str(pretrained / "t.json"))
    reused = datamodule(data, tokenizer_from=str(pretrained))
    assert reused.source_tokenizer.get_vocab() == fitted.target_tokenizer.get_vocab()
    assert reused.target_vocab_size == fitted.source_vocab_size
    with pytest.raises(DataError, match="has no source_tokenizer, target_tokenizer .*it has: tokenizer"):
        datamodule(data, tokenizer_from="imdb-bilstm")


def test_translation_column_and_language_direction(tmp_path):
    dm = datamodule(
        synthetic_pairs(tmp_path / "d", nested=True),
        translation_column="translation",
        source_lang="en",
        target_lang="de",
    )
    assert dm.language_pair == "en-de"
    assert "e3" in "".join(dm.source_tokenizer.get_vocab()) and "g3" in "".join(dm.target_tokenizer.get_vocab())
    with pytest.raises(DataError, match="no 'fr' text"):
        _ = datamodule(tmp_path / "d", translation_column="translation", source_lang="fr").source_tokenizer
    with pytest.raises(DataError, match="no column 'fr'"):
        datamodule(synthetic_pairs(tmp_path / "flat"), source_lang="fr").prepare_data()
    with pytest.raises(ValueError, match="both 'de'"):
        datamodule(tmp_path / "flat", target_lang="de")


def test_long_pairs_dropped_in_training_truncated_in_evaluation(tmp_path, caplog):
    dm = datamodule(synthetic_pairs(tmp_path / "d"), max_length=5)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
        dm.setup("test")
    assert "dropped" in caplog.text and "truncated" in caplog.text
    # max_length counts a side's text tokens, as in every datamodule: a source has <eos> on top
    assert all(len(source) <= 5 + 1 and len(target) <= 5 for source, target, _, _ in dm.examples["train"])
    assert len(dm.examples["test"]) == 40  # every test pair is kept, so every reference is scored
    assert max(len(source) for source, _, _, _ in dm.examples["test"]) == 5 + 1


def test_streaming_shards_are_disjoint_across_ranks(tmp_path):
    folder = synthetic_pairs(tmp_path / "d")
    seen = []
    for rank in (0, 1):
        dm = datamodule(folder, streaming=True, batch_size=8)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, limit_train_batches=1000, current_epoch=0)
        stream = dm.train_dataloader().dataset
        stream.repeat = False  # one pass over this rank's shard
        seen.append(
            [
                (text, ids)
                for batch in stream
                for text, ids in zip(batch["references"], batch["source"].tolist(), strict=True)
            ]
        )
    all_targets = datasets.Dataset.from_parquet(str(folder / "train.parquet"))["en"]
    assert seen[0] and seen[1]
    # Together the ranks see exactly the training split, each pair once (as a multiset: there are repeats).
    assert sorted(t for rank in seen for t, _ in rank) == sorted(all_targets)


def test_streaming_under_ddp_needs_an_epoch_length(tmp_path):
    dm = datamodule(synthetic_pairs(tmp_path / "d"), streaming=True)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=2, limit_train_batches=1.0, current_epoch=0)
    with pytest.raises(DataError, match="limit_train_batches"):
        dm.train_dataloader()


class Task(TranslationTask):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_learns_to_translate_and_refuses_another_language_pair(tmp_path):
    folder = synthetic_pairs(tmp_path / "d", rows=(("train", 600), ("validation", 40), ("test", 40)))
    dm = datamodule(folder)
    torch.manual_seed(0)
    task = Task(
        dm.source_vocab_size,
        dm.target_vocab_size,
        dm.language_pair,
        beam_size=3,
        embedding_dim=32,
        hidden_size=32,
        dropout=0.0,
    )
    trainer = L.Trainer(
        max_epochs=12, logger=False, enable_progress_bar=False, default_root_dir=tmp_path, enable_checkpointing=False
    )
    trainer.fit(task, dm)
    metrics = trainer.test(task, dm, verbose=False)[0]
    assert metrics["test_bleu"] > 60  # reversing a word-for-word dictionary is learnable with attention
    assert "nrefs:1" in task.bleu_signature
    # Raw text in, detokenized target-language text out (the exact words are the BLEU check's job).
    assert all(re.fullmatch(r"(e\d+ )*e\d+\.", out) for out in task.translate(["g1 g2 g3.", "g7."], beam_size=1))
    heatmap = tmp_path / "attention.png"
    task.plot_attention("g1 g2 g3.", heatmap)
    assert heatmap.stat().st_size > 0
    with pytest.raises(ValueError, match="empty"):
        task.translate(["  "])

    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    reverse = datamodule(folder, source_lang="en", target_lang="de")
    other = Task(
        reverse.source_vocab_size, reverse.target_vocab_size, reverse.language_pair, embedding_dim=32, hidden_size=32
    )
    with pytest.raises(ValueError, match="language_pair de-en, the data has en-de"):
        L.Trainer(logger=False).test(other, reverse, ckpt_path=ckpt)
