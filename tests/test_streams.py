import pytest
import torch

from datamodules.streams import IGNORE_INDEX, BPTTWindows, stream_layout

PAD = -1


def test_layout_keeps_rows_contiguous_and_covers_every_pair_once():
    stream = torch.arange(23)
    inputs, targets = stream_layout(stream, batch_size=4, pad_id=PAD)
    assert inputs.shape == targets.shape == (4, 6)
    valid = targets != IGNORE_INDEX
    assert torch.equal(targets[valid], inputs[valid] + 1)  # next-token targets
    assert inputs[valid].tolist() == list(range(22))  # all 22 pairs, in order, row after row
    assert (~valid).sum() == 2 and (inputs[~valid] == PAD).all()


def test_ddp_shards_are_disjoint_and_equally_long():
    stream = torch.arange(101)
    shards = [stream_layout(stream, 3, PAD, rank, 2) for rank in range(2)]
    assert shards[0][0].shape == shards[1][0].shape
    seen = [inputs[targets != IGNORE_INDEX].tolist() for inputs, targets in shards]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(100))


def test_windows_walk_the_rows_in_order():
    inputs, targets = stream_layout(torch.arange(41), batch_size=2, pad_id=PAD)
    windows = list(BPTTWindows(inputs, targets, bptt=7))
    assert len(windows) == len(BPTTWindows(inputs, targets, 7)) == 3
    assert [w[0].shape[1] for w in windows] == [7, 7, 6]
    assert torch.equal(torch.cat([w[0] for w in windows], 1), inputs)


def test_bad_sizes():
    with pytest.raises(ValueError, match="bptt"):
        BPTTWindows(torch.zeros(1, 4), torch.zeros(1, 4), bptt=0)
    with pytest.raises(ValueError, match="batch_size"):
        stream_layout(torch.arange(10), 0, PAD)
