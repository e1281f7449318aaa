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
