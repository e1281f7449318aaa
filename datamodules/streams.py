"""The contiguous-stream layout for language modelling with truncated BPTT.

A split is one long token stream. It is cut into ``batch_size`` contiguous rows, and batches are
consecutive ``bptt``-long windows over those rows, so row ``b`` of batch ``i + 1`` continues row
``b`` of batch ``i`` and the recurrent state can be carried across batches (pytorch/examples
``word_language_model``, Zaremba et al. 2014). Nothing is dropped: the tail of the last row is
padded and its targets are ``IGNORE_INDEX``, so a metric over all batches covers the whole split.
"""

import math

import torch
from torch.utils.data import IterableDataset

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


def stream_layout(
    stream: torch.Tensor, batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets of ``stream``, both ``(batch_size, steps)``.

    With ``world_size > 1`` each rank gets its own contiguous shard; every rank gets the same
    number of steps (DDP needs the same number of batches everywhere).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs, targets = stream[:-1], stream[1:]
    per_rank = math.ceil(inputs.numel() / world_size)
    shard = slice(rank * per_rank, (rank + 1) * per_rank)
    inputs, targets = inputs[shard], targets[shard]
    steps = max(1, math.ceil(per_rank / batch_size))
    padding = batch_size * steps - inputs.numel()
    inputs = torch.cat([inputs, inputs.new_full((padding,), pad_id)])
    targets = torch.cat([targets, targets.new_full((padding,), IGNORE_INDEX)])
    return inputs.view(batch_size, steps), targets.view(batch_size, steps)


class BPTTWindows(IterableDataset):
    """Yields ``(inputs, targets)`` windows of ``bptt`` steps, in order (never shuffle them)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, bptt: int):
        if bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt}")
        self.inputs, self.targets, self.bptt = inputs, targets, bptt

    def __len__(self) -> int:
        return math.ceil(self.inputs.size(1) / self.bptt)

    def __iter__(self):
        for start in range(0, self.inputs.size(1), self.bptt):
            end = start + self.bptt
            yield self.inputs[:, start:end], self.targets[:, start:end]
