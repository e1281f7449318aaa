import random

import datasets
import lightning as L
import pytest
import torch
import torch.nn.functional as F

from datamodules import CoNLLDataModule, DataError, PTBDataModule
from lightning_modules import TaggingTask
from lightning_modules.tagging import is_iob2
from tests.conftest import shared_dataset
from zoo import SequenceTagger
from zoo.networks.tagger import CharConvWordEncoder

NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def random_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 3, 5])
    tokens = torch.randint(2, 40, (3, 6), generator=g)
    chars = torch.randint(2, 20, (3, 6, 4), generator=g)
    char_lengths = torch.randint(1, 5, (3, 6), generator=g)
    return tokens, lengths, chars, char_lengths


@pytest.mark.parametrize("char_encoder", ["lstm", "cnn"])
@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_padding_never_changes_a_sentence(output, char_encoder):
    torch.manual_seed(0)
    chars = {"char_vocab_size": 20, "char_embedding_dim": 4, "char_hidden_size": 3, "char_encoder": char_encoder}
    tagger = SequenceTagger(40, NER, 8, 6, **chars, output=output)
    tagger.eval()
    tokens, lengths, chars, char_lengths = random_batch()
    emissions = tagger(tokens, lengths, chars, char_lengths)
    mask = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    decoded = tagger.decode(emissions, mask)
    for row, n in enumerate(lengths.tolist()):
        alone = tagger(
            tokens[row : row + 1, :n], lengths[row : row + 1], chars[row : row + 1, :n], char_lengths[row : row + 1, :n]
        )
        torch.testing.assert_close(emissions[row, :n], alone[0])
        assert torch.equal(decoded[row, :n], tagger.decode(alone, torch.ones(1, n, dtype=torch.bool))[0])


def test_char_cnn_feature_is_the_max_of_the_convolution_over_the_words_own_characters():
    torch.manual_seed(0)
    encoder = CharConvWordEncoder(20, char_embedding_dim=4, filters=5, width=3).eval()
    chars, lengths = torch.randint(2, 20, (1, 2, 6)), torch.tensor([[6, 2]])
    features = encoder(chars, lengths)
    x = F.pad(encoder.embedding(chars[0, 1, :2]).T, (1, 1))  # the 2-letter word, zero-padded at both edges
    windows = [(encoder.conv.weight * x[:, i : i + 3]).sum((1, 2)) + encoder.conv.bias for i in range(2)]
    torch.testing.assert_close(features[0, 1], torch.stack(windows).amax(0))
    noisy = chars.clone()
    noisy[0, 1, 2:] = torch.randint(2, 20, (4,))  # characters in the padding after the word are ignored
    torch.testing.assert_close(encoder(noisy, lengths), features)
    with pytest.raises(ValueError, match="char_width must be odd"):
        CharConvWordEncoder(20, width=2)


def test_crf_tagger_never_outputs_invalid_iob2():
    torch.manual_seed(0)
    tagger = SequenceTagger(40, NER, 8, 6, output="crf").eval()
    with torch.no_grad():
        tagger.emissions.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0, 5.0]))  # pushes towards I-* tags
    tokens, lengths, _, _ = random_batch()
    mask = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    for row, n in zip(tagger.decode(tagger(tokens, lengths), mask).tolist(), lengths.tolist(), strict=True):
        tags = ["O"] + [NER[t] for t in row[:n]]
        for previous, tag in zip(tags, tags[1:], strict=False):
            assert not tag.startswith("I-") or previous[2:] == tag[2:], tags


def test_conll_datamodule_on_the_real_corpus():
    dm = CoNLLDataModule(data_dir=str(shared_dataset("conll2003")))
    assert dm.labels == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    assert "0000" in dm.tokenizer.get_vocab() and "1996" not in dm.tokenizer.get_vocab()  # digits -> 0
    dm.setup("fit")
    assert len(dm.examples["train"]) == 14_041
    assert sum(len(ids) for ids, _, _ in dm.examples["train"]) == 203_621
    batch = next(iter(dm.val_dataloader()))
    assert (
        batch["chars"].shape[:2] == batch["input_ids"].shape and (batch["tags"][batch["input_ids"] == 0] == -100).all()
    )
    pos = CoNLLDataModule(data_dir=str(shared_dataset("conll2003")), tag_column="pos_tags", max_samples=50)
    assert len(pos.labels) == 47 and not is_iob2(pos.labels) and is_iob2(dm.labels)


def test_conll_datamodule_refuses_bad_columns():
    folder = str(shared_dataset("conll2003"))
    with pytest.raises(DataError, match="no column 'ner'"):
        CoNLLDataModule(data_dir=folder, tag_column="ner", max_samples=10).prepare_data()
    with pytest.raises(DataError, match="not a sequence of ClassLabel"):
        CoNLLDataModule(data_dir=folder, tag_column="id", max_samples=10).prepare_data()


def synthetic_ner(folder, n=160, seed=0):
    """Sentences where 'Alice'/'Bob' start a person, 'Smith' continues one, 'Paris' is a location."""
    rng = random.Random(seed)
    tag_feature = datasets.Sequence(datasets.ClassLabel(names=NER))
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": tag_feature})
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        rows = {"tokens": [], "ner_tags": []}
        for _ in range(n):
            words, tags = [], []
            for _ in range(rng.randint(2, 8)):
                kind = rng.choice(["O", "O", "PER", "LOC"])
                if kind == "PER":
                    words += [rng.choice(["Alice", "Bob"]), "Smith"]
                    tags += [1, 2]
                elif kind == "LOC":
                    words.append("Paris")
                    tags.append(3)
                else:
                    words.append(rng.choice(["the", "went", "to", "saw", "a", "cat"]))
                    tags.append(0)
            rows["tokens"].append(words)
            rows["ner_tags"].append(tags)
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    return folder


def test_a_language_model_on_the_sentences_reads_the_taggers_words_and_lends_it_its_vocabulary(tmp_path):
    from zoo import RNNLanguageModel
    from zoo.storage.pretrained import save_pretrained

    folder = synthetic_ner(tmp_path / "ner")
    sentences = datasets.Dataset.from_parquet(str(folder / "train.parquet"))
    dated = sentences.map(lambda row, i: {"tokens": row["tokens"] + [f"{1990 + i % 7}", "."]}, with_indices=True)
    dated.to_parquet(str(folder / "train.parquet"))  # years: both read every digit as 0
    lm = PTBDataModule(data_dir=str(folder), text_column="tokens", digits_to_zero=True, min_frequency=2)
    tagger = CoNLLDataModule(data_dir=str(folder), min_frequency=2)
    specials = {"<pad>", "<unk>", "<eos>"}

    def words(tokenizer):
        return {token: i for token, i in tokenizer.get_vocab().items() if token not in specials}

    assert words(lm.tokenizer) == words(tagger.tokenizer) and "0000" in words(lm.tokenizer)
    assert lm.tokenizer.encode("Alice Smith saw 1996").tokens == ["Alice", "Smith", "saw", "0000"]
    with pytest.raises(DataError, match="'ner_tags' column is .*, not text or a list of words"):
        _ = PTBDataModule(data_dir=str(folder), text_column="ner_tags").tokenizer

    arguments = {"vocab_size": lm.vocab_size, "embedding_dim": 4, "hidden_size": 4}
    tokenizers = {"tokenizer": lm.tokenizer.to_str()}
    source = save_pretrained(
        tmp_path / "lm", RNNLanguageModel(**arguments), arguments=arguments, task_arguments={}, tokenizers=tokenizers
    )
    from_lm = CoNLLDataModule(data_dir=str(folder), tokenizer_from=str(source))
    assert from_lm.tokenizer.to_str() == lm.tokenizer.to_str()
    assert from_lm.char_tokenizer.to_str() == tagger.char_tokenizer.to_str()  # characters: fitted on train


class Task(TaggingTask):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)


def test_tagging_task_learns_entities_and_reports_seqeval(tmp_path):
    dm = CoNLLDataModule(data_dir=str(synthetic_ner(tmp_path / "ner")), min_frequency=1, batch_size=16)
    torch.manual_seed(0)
    task = Task(
        dm.vocab_size,
        dm.labels,
        dm.char_vocab_size,
        embedding_dim=16,
        hidden_size=16,
        num_layers=1,
        dropout=0.0,
        char_hidden_size=8,
    )
    trainer = L.Trainer(max_epochs=5, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(task, dm)
    metrics = trainer.test(task, dm, verbose=False)[0]
    assert metrics["test_f1"] > 0.95 and metrics["test_f1_PER"] > 0.95 and metrics["test_token_acc"] > 0.95
    rows = task.tag(["Bob Smith went to Paris", ["the", "cat", "saw", "Alice", "Smith"]])
    assert rows[0]["tags"] == ["B-PER", "I-PER", "O", "O", "B-LOC"]
    assert rows[1] == {"words": ["the", "cat", "saw", "Alice", "Smith"], "tags": ["O", "O", "O", "B-PER", "I-PER"]}
