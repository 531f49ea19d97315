"""The training sample stream: which image, under which augmentation seed, at every iteration.

Every sample's augmentation is seeded by ``(seed, position in the sample stream)``, so the data a step
sees does not depend on the number of workers, on the number of DDP processes, or on where a run was
interrupted.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset

from pipeline.utils.distributed import Dist


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` runs its random transforms under ``seed``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class SampleStream:
    """Batches of ``(index, seed)`` for iterations ``start, start+1, ...``: an endless sequence of
    seeded epoch permutations, each global batch split across DDP ranks (the role of a
    DistributedSampler, but resumable at any iteration)."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, start_iteration: int, dist_info: Dist):
        self.n, self.batch, self.seed, self.start, self.dist = num_samples, global_batch, seed, start_iteration, dist_info
        self.per_rank = global_batch // dist_info.world_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start
        cached_epoch, order = -1, None
        while True:
            first = iteration * self.batch + self.dist.rank * self.per_rank
            batch = []
            for position in range(first, first + self.per_rank):
                epoch = position // self.n
                if epoch != cached_epoch:
                    g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                    order, cached_epoch = torch.randperm(self.n, generator=g), epoch
                batch.append((int(order[position % self.n]), self.seed * 1_000_000_007 + position))
            yield batch
            iteration += 1


def step_seed(seed: int, iteration: int, dist_info: Dist) -> int:
    """The seed of what a training step of this process draws at random besides its data (Mask R-CNN's
    proposal and RoI sampling), by ``(seed, iteration, rank)`` as the augmentation is by sample position."""
    return (seed * 1_000_003 + iteration) * dist_info.world_size + dist_info.rank


def worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)
