"""Which samples go in which batch, identical for any number of processes.

The epoch's order is a permutation seeded by (seed, epoch); global batch t is
order[t*B:(t+1)*B] and rank r trains on its r-th contiguous slice. So a run on N
processes sees the same global batches as a run on one, and an epoch can be restarted
at any batch (resume) without replaying the ones before it.

With `device` set, each epoch's order is moved there once, so the per-step batches are
sliced on the device: a copy from pageable host memory to a GPU waits for every queued
kernel, and one per step would stop the host from running ahead of the GPU.
"""

from __future__ import annotations

import torch

from vit.training.data import DataError
from vit.training.seeds import seed_for


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(seed_for("order", seed, epoch))
    return torch.randperm(num_samples, generator=generator)


class ShardedBatches:
    """Index batches for one rank: `set_epoch(epoch, start)` then iterate.

    Training (`drop_last=True`) keeps whole global batches; evaluation (`drop_last=False`,
    no shuffle) gives rank r every world-th sample so that each sample counts once.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        rank: int,
        world: int,
        seed: int,
        train: bool = True,
        device: torch.device | str = "cpu",
    ):
        if global_batch % world:
            raise DataError(f"data.batch_size={global_batch} is not divisible by the {world} processes")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world, self.seed, self.train = rank, world, seed, train
        self.local_batch = global_batch // world
        self.device = torch.device(device)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        if self.train:
            return self.num_samples // self.global_batch
        shard = len(range(self.rank, self.num_samples, self.world))
        return -(-shard // self.local_batch)

    def __iter__(self):
        if self.train:
            order = epoch_order(self.num_samples, self.seed, self.epoch).to(self.device)
            for t in range(self.start, len(self)):
                lo = t * self.global_batch + self.rank * self.local_batch
                yield order[lo : lo + self.local_batch]
        else:
            shard = torch.arange(self.rank, self.num_samples, self.world, device=self.device)
            yield from shard.split(self.local_batch)


class SampledBatches:
    """What loaders driven by a ShardedBatches `sampler` share: resumable at a batch."""

    sampler: ShardedBatches

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.sampler)
