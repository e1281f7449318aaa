import random
import re

import datasets
import lightning as L
import pytest
import torch

from datamodules import DataError, PTBDataModule
from datamodules.streams import IGNORE_INDEX


def test_ptb_vocabulary_and_stream_sizes_match_the_corpus(ptb_dir):
    dm = PTBDataModule(data_dir=str(ptb_dir))
    assert dm.vocab_size == 10_000  # PTB's own vocabulary: 9,999 words (with <unk>) + <eos>
    assert dm.tokenizer.token_to_id("<unk>") == 0 and dm.eos_id == 1
    dm.setup("fit")
    dm.setup("test")
    # words + one <eos> per line, as the data's README counts them
    assert [dm.streams[s].numel() for s in ("train", "validation", "test")] == [929_589, 73_760, 82_430]
    # validation has no word outside the train vocabulary: every id 0 is a literal <unk>
    literal_unks = sum(s.split().count("<unk>") for s in dm.splits["validation"]["sentence"])
    assert int((dm.streams["validation"] == 0).sum()) == literal_unks


def test_batches_are_deterministic_and_cover_the_split(ptb_dir):
    def batches():
        dm = PTBDataModule(data_dir=str(ptb_dir), batch_size=4, eval_batch_size=3, bptt=9, max_samples=150)
        dm.setup("fit")
        return dm, list(dm.val_dataloader())

    (dm, first), (_, second) = batches(), batches()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))
    assert first[0][0].shape == (3, 9)
    targets = torch.cat([t for _, t in first], dim=1)
    assert int((targets != IGNORE_INDEX).sum()) == dm.streams["validation"].numel() - 1


def test_char_level_round_trips_text(ptb_dir):
    dm = PTBDataModule(data_dir=str(ptb_dir), level="char", max_samples=200)
    sentence = dm.splits["train"]["sentence"][0]
    assert dm.vocab_size < 60
    ids = dm.tokenizer.encode(sentence).ids
    assert len(ids) == len(sentence) and dm.tokenizer.decode(ids) == sentence


def test_missing_folder_split_and_column_are_clear_errors(tmp_path, synthetic_corpus):
    with pytest.raises(DataError, match="does not exist"):
        PTBDataModule(data_dir=str(tmp_path / "nowhere")).prepare_data()
    with pytest.raises(DataError, match="no column 'text'"):
        PTBDataModule(data_dir=str(synthetic_corpus), text_column="text").prepare_data()
    (synthetic_corpus / "test.parquet").unlink()
    with pytest.raises(DataError, match="test.parquet"):
        PTBDataModule(data_dir=str(synthetic_corpus)).prepare_data()


@pytest.mark.parametrize("argument", ["bptt", "batch_size", "eval_batch_size"])
def test_sizes_below_one_are_refused(argument):
    with pytest.raises(ValueError, match=argument):
        PTBDataModule(data_dir="unused", **{argument: 0})


# ---- raw text (IMDB reviews): held-out validation, stage-wise loading, tokenizer options ---------

REVIEW_WORDS = ["Film", "movie", "GREAT", "bad", "plot", "actors", "it's", "was", "the", "a", "not", "boring"]


def write_reviews(folder, n: int = 80, seed: int = 0, splits=("train",)):
    """IMDB-shaped Parquet: raw reviews (mixed case, punctuation, ``<br />``) with a ClassLabel."""
    rng = random.Random(seed)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        texts = []
        for i in range(n):
            # a unique first word per row: the rows of the held-out split can be told apart
            words = [f"{split}{i}"] + rng.choices(REVIEW_WORDS, weights=range(12, 0, -1), k=rng.randint(3, 15))
            texts.append(" ".join(word + rng.choice(["", "", ",", "!", ".<br />"]) for word in words))
        rows = {"text": texts, "label": [i % 2 for i in range(n)]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    return folder


def reviews_lm(folder, **kwargs) -> PTBDataModule:
    return PTBDataModule(data_dir=str(folder), text_column="text", batch_size=2, eval_batch_size=2, bptt=5, **kwargs)


def test_val_size_holds_out_seeded_train_rows_and_validates_on_them(tmp_path):
    folder = write_reviews(tmp_path / "reviews")
    train_texts = list(reviews_lm(folder).splits["train"]["text"])
    dm = reviews_lm(folder, val_size=10)
    dm.setup("fit")
    train, held_out = list(dm.splits["train"]["text"]), list(dm.splits["validation"]["text"])
    assert len(train) == 70 and len(held_out) == 10
    assert sorted(train + held_out) == sorted(train_texts)
    assert held_out == list(reviews_lm(folder, val_size=10).splits["validation"]["text"])  # seeded
    assert held_out != list(reviews_lm(folder, val_size=10, seed=1).splits["validation"]["text"])

    expected = [i for text in held_out for i in [*dm.tokenizer.encode(text).ids, dm.eos_id]]
    assert dm.streams["validation"].tolist() == expected

    few = reviews_lm(folder, val_size=10, max_samples=4)  # max_samples cuts after holding out
    assert list(few.splits["validation"]["text"]) == held_out[:4] and list(few.splits["train"]["text"]) == train[:4]


def test_fit_with_val_size_never_opens_the_test_or_validation_files(tmp_path):
    from lightning_modules import LanguageModelTask

    class Task(LanguageModelTask):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1.0)

    folder = write_reviews(tmp_path / "reviews")
    for split in ("validation", "test"):
        (folder / f"{split}.parquet").write_text("not Parquet: reading this file fails")
    dm = reviews_lm(folder, val_size=10, lowercase=True, split_punctuation=True)
    task = Task(dm.vocab_size, embedding_dim=8, hidden_size=8, num_layers=1)
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=2, default_root_dir=tmp_path, **options)
    trainer.fit(task, dm)  # prepare_data and setup("fit") of the stage's splits only
    assert set(dm.streams) == {"train", "validation"} and trainer.global_step == 2


def test_test_stage_without_a_test_file_is_a_clear_error(tmp_path):
    dm = reviews_lm(write_reviews(tmp_path / "reviews"), val_size=10)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"lacks .*test\.parquet"):
        dm.setup("test")


def test_tokenizer_options_for_raw_text(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    texts = ["Great film!<br />Loved it.", "great, GREAT film.", "a film", "film it it"]
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(folder / "train.parquet"))

    def tokens(text, **options):
        return reviews_lm(folder, **options).tokenizer.encode(text).tokens

    assert tokens("Great film!<br />Loved") == ["Great", "film!<br", "/>Loved"]  # PTB's whitespace split
    raw = dict(lowercase=True, split_punctuation=True, replacements={"<br />": " "})
    assert tokens("Great film!<br />Loved it.", **raw) == ["great", "film", "!", "loved", "it", "."]
    assert tokens("GREAT film!", lowercase=True) == ["great", "<unk>"]
    assert tokens("GREAT film.", split_punctuation=True) == ["GREAT", "film", "."]

    vocabulary = reviews_lm(folder, **raw, max_vocab=5).tokenizer.get_vocab()
    assert vocabulary == {"<unk>": 0, "<eos>": 1, "film": 2, "great": 3, "it": 4}  # the most frequent words
    frequent = reviews_lm(folder, **raw, min_frequency=3).tokenizer.get_vocab()
    assert set(frequent) == {"<unk>", "<eos>", "film", "great", "it"}  # "." and "a" are seen twice or less

    chars = reviews_lm(folder, level="char", lowercase=True, replacements={"<br />": " "}).tokenizer
    assert chars.decode(chars.encode("Great!<br />It").ids) == "great! it"


def test_word_vocabulary_equals_the_imdb_classifiers(tmp_path):
    from datamodules import IMDBDataModule

    folder = write_reviews(tmp_path / "imdb", splits=("train", "test"))
    imdb = IMDBDataModule(data_dir=str(folder), val_size=4, max_vocab=12)  # fewer than the corpus' 17 frequent words
    lm_folder = tmp_path / "lm"
    lm_folder.mkdir()
    imdb.splits["train"].to_parquet(str(lm_folder / "train.parquet"))  # the same training reviews
    lm = reviews_lm(
        lm_folder, lowercase=True, split_punctuation=True, replacements={"<br />": " "}, max_vocab=12, min_frequency=2
    )

    def words(tokenizer, specials):
        return {token: i for token, i in tokenizer.get_vocab().items() if token not in specials}

    classifier_words = words(imdb.tokenizer, ("<pad>", "<unk>"))
    assert len(classifier_words) == 10 and words(lm.tokenizer, ("<unk>", "<eos>")) == classifier_words
    review = imdb.splits["validation"]["text"][0]
    assert lm.tokenizer.encode(review).tokens == imdb.tokenizer.encode(review).tokens


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"level": "char", "split_punctuation": True}, ValueError, "level='char' takes no split_punctuation"),
        ({"level": "char", "max_vocab": 100}, ValueError, "level='char' takes no max_vocab"),
        ({"level": "char", "min_frequency": 2}, ValueError, "level='char' takes no min_frequency"),
        ({"max_vocab": 2}, ValueError, "max_vocab counts <unk>, <eos> too"),
        ({"min_frequency": 0}, ValueError, "min_frequency must be >= 1"),
        ({"val_size": 0}, DataError, "val_size must be >= 1"),
    ],
)
def test_invalid_options_are_refused(options, error, message):
    with pytest.raises(error, match=re.escape(message)):
        PTBDataModule(data_dir="unused", **options)


def test_val_size_of_all_train_rows_is_refused(tmp_path):
    dm = reviews_lm(write_reviews(tmp_path / "reviews", n=30), val_size=30)
    with pytest.raises(DataError, match="val_size=30 is not below the 30 training rows; hold out fewer"):
        dm.setup("fit")
