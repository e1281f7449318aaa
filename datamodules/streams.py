"""The contiguous-stream layout for language modelling with truncated BPTT.

A split is one long token stream. It is cut into ``batch_size`` contiguous rows, and batches are
consecutive ``bptt``-long windows over those rows, so row ``b`` of batch ``i + 1`` continues row
``b`` of batch ``i`` and the recurrent state can be carried across batches (pytorch/examples
``word_language_model``, Zaremba et al. 2014). Nothing is dropped: the tail of the last row is
padded and its targets are ``IGNORE_INDEX``, so a metric over all batches covers the whole split.
"""

import math

import torch
from torch.utils.data import DataLoader, IterableDataset

from zoo.common.text import IGNORE_INDEX


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
    """Yields ``(inputs, targets)`` windows of ``bptt`` steps, in order (never shuffle them).

    ``position`` counts the windows the current pass has yielded; a pass begins at ``start`` (then
    reset to 0), which is how a run resumed in the middle of an epoch skips what it has trained on.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, bptt: int):
        if bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt}")
        self.inputs, self.targets, self.bptt = inputs, targets, bptt
        self.start = self.position = 0

    def __len__(self) -> int:
        return math.ceil(self.inputs.size(1) / self.bptt)

    def __iter__(self):
        first, self.start = self.start, 0
        for index in range(first, len(self)):
            self.position = index + 1
            window = slice(index * self.bptt, (index + 1) * self.bptt)
            yield self.inputs[:, window], self.targets[:, window]


class WindowLoader(DataLoader):
    """The windows of a split, in order, as a loader Lightning saves in its checkpoints (it calls
    ``state_dict``/``load_state_dict`` of loaders that have them), so that a run killed in the middle
    of an epoch resumes at the next window. Exact because Lightning does not prefetch from a loader
    whose length it knows and the windows are read in the main process."""

    def __init__(self, windows: BPTTWindows):
        super().__init__(windows, batch_size=None)  # the dataset already yields whole batches

    def state_dict(self) -> dict:
        return {"position": self.dataset.position}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.start = state["position"] % len(self.dataset)
