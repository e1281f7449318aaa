"""Length-bucketed batches of variable-length sequences, padded, with their lengths.

Sorting every batch's members by length keeps padding (and wasted recurrent steps) small;
shuffling pools of batches keeps training batches random. The batches are made here rather than
by a ``Sampler`` so that DDP ranks take disjoint batches without Lightning replacing the sampler.
"""

import math
import random
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset

from zoo.common.text import pad


def pad_sequences(sequences: Sequence[Sequence[int]], pad_value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(B, T)`` long tensor and the ``(B,)`` lengths (``zoo.common.text.pad``)."""
    padded, lengths = pad(sequences, pad_value)
    return torch.from_numpy(padded), torch.from_numpy(lengths)


def bucket_batches(
    lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0, pool_batches: int = 50
) -> list[list[int]]:
    """Index batches of similar length. Evaluation (``shuffle=False``): sorted by length, longest first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = list(range(len(lengths)))
    if not shuffle:
        indices.sort(key=lambda i: -lengths[i])
        return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(indices)
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(indices), pool):
        members = sorted(indices[start : start + pool], key=lambda i: lengths[i])
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


class BucketedBatches(IterableDataset):
    """Yields ready batches ``collate([examples])`` for this rank, a fresh shuffle every epoch.

    ``epoch`` is a callable (the trainer's current epoch) so that each epoch shuffles anew.
    Under DDP every rank gets the same number of batches: the list is padded by repeating its
    first batches (as ``DistributedSampler`` repeats samples).
    """

    def __init__(
        self,
        examples: Sequence,
        lengths: Sequence[int],
        batch_size: int,
        collate: Callable,
        shuffle: bool,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.examples, self.lengths, self.batch_size, self.collate = examples, lengths, batch_size, collate
        self.shuffle, self.seed, self.epoch, self.rank, self.world_size = shuffle, seed, epoch, rank, world_size

    def _rank_batches(self) -> list[list[int]]:
        batches = bucket_batches(self.lengths, self.batch_size, self.shuffle, self.seed + self.epoch())
        per_rank = math.ceil(len(batches) / self.world_size)
        batches += batches[: per_rank * self.world_size - len(batches)]
        return batches[self.rank :: self.world_size]

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.world_size)

    def __iter__(self):
        for batch in self._rank_batches():
            yield self.collate([self.examples[i] for i in batch])


def bucketed_loader(examples, lengths, batch_size: int, collate: Callable, shuffle: bool, seed: int, trainer):
    """A DataLoader over ``BucketedBatches`` that follows the trainer's epoch, rank and world size."""
    batches = BucketedBatches(
        examples,
        lengths,
        batch_size,
        collate,
        shuffle,
        seed,
        epoch=(lambda: trainer.current_epoch) if trainer else (lambda: 0),
        rank=trainer.global_rank if trainer else 0,
        world_size=trainer.world_size if trainer else 1,
    )
    return DataLoader(batches, batch_size=None)
