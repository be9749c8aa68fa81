"""Datasets small enough to hold as one uint8 tensor (CIFAR, digits, the positional probe).

On a GPU the whole split lives on the device; each batch is gathered, cropped and flipped
there, so a small ViT is never waiting for a data loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from vit.errors import ConfigError
from vit.training.data.augment import batch_generator, random_crop_flip
from vit.training.data.batches import SampledBatches, ShardedBatches
from vit.training.data.source import DataSource
from vit.training.data.trivial_augment import draw, trivial_augment
from vit.training.seeds import seed_for


@dataclass
class Split:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)


POLICIES = ("none", "trivialaugment")


class InMemoryData(DataSource):
    def __init__(self, *, crop_padding: int = 0, flip: bool = False, policy: str = "none", **kwargs):
        super().__init__(**kwargs)
        if policy not in POLICIES:
            raise ConfigError(f"data: policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.crop_padding, self.flip, self.policy = crop_padding, flip, policy

    def splits(self) -> tuple[Split, Split]:
        """(train, val) as uint8 tensors on the CPU."""
        raise NotImplementedError

    def loaders(self, device: torch.device, rank: int, world: int, seed: int):
        train, val = self.splits()
        augment = self.crop_padding > 0 or self.flip or self.policy != "none"
        batches = partial(
            ShardedBatches, global_batch=self.batch_size, rank=rank, world=world, seed=seed, device=device
        )
        return (
            TensorBatches(train, device, batches(len(train.labels)), self if augment else None),
            TensorBatches(val, device, batches(len(val.labels), train=False)),
        )


class TensorBatches(SampledBatches):
    """Batches (uint8 images, labels) on the device, augmented there for training."""

    def __init__(
        self, split: Split, device: torch.device, sampler: ShardedBatches, augment: InMemoryData | None = None
    ):
        self.images, self.labels = split.images.to(device), split.labels.to(device)
        self.sampler, self.augment, self.device = sampler, augment, device

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __iter__(self):
        s = self.sampler
        for step, index in enumerate(s, start=s.start if s.train else 0):  # index is on the device
            images, labels = self.images[index], self.labels[index]
            if self.augment is not None:
                generator = batch_generator(self.device, s.seed, s.epoch, step)
                offset = s.rank * s.local_batch
                images = random_crop_flip(
                    images, self.augment.crop_padding, self.augment.flip, generator, s.global_batch, offset
                )
                if self.augment.policy == "trivialaugment":
                    host = torch.Generator().manual_seed(seed_for("policy", s.seed, s.epoch, step))
                    images = trivial_augment(images, *draw(generator, host, s.global_batch, offset, len(images)))
            yield images, labels
