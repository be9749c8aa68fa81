"""Batches from a decoded cache: read from the memory map, moved as uint8, augmented on the device.

Training: each image's RandomResizedCrop box and flip are drawn from (seed, epoch, index)
(crop_boxes.py); the host copies only the boxes out of the memory map into one padded uint8
batch, and the device resizes them all at once (resized_crop.py), then applies the policy.
Each process reads only the images of its own slice of the global batch.
Validation: the stored images are already at their final size.
"""

from __future__ import annotations

import numpy as np
import torch

from vit.training.data.augment import batch_generator
from vit.training.data.batches import ShardedBatches
from vit.training.data.crop_boxes import flips, image_uniforms, resized_crop_boxes
from vit.training.data.decoded_cache import DecodedSplit
from vit.training.data.resized_crop import resize_crops
from vit.training.data.trivial_augment import draw, trivial_augment
from vit.training.seeds import seed_for


class CachedBatches:
    """(uint8 images, labels) on the device from a decoded cache; `train` augments."""

    def __init__(
        self,
        split: DecodedSplit,
        device: torch.device,
        sampler: ShardedBatches,
        img_size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        policy: str = "none",
    ):
        self.split, self.device, self.sampler, self.img_size = split, device, sampler, img_size
        self.scale, self.flip, self.policy = tuple(scale), flip, policy

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def __iter__(self):
        s = self.sampler
        for step, index in enumerate(s, start=s.start if s.train else 0):
            rows = index.numpy()
            images = self.augmented(rows, step) if s.train else self.stored(rows)
            yield images, self.to_device(self.split.labels[rows])

    def stored(self, rows: np.ndarray) -> torch.Tensor:
        """Validation images as stored: (B, C, S, S)."""
        batch = np.stack([self.split.image(i) for i in rows])
        return self.to_device(batch).permute(0, 3, 1, 2).contiguous()

    def augmented(self, rows: np.ndarray, step: int) -> torch.Tensor:
        crops, sizes = self.host_crops(rows)
        sizes = self.to_device(sizes)
        images = resize_crops(self.to_device(crops), sizes[0], sizes[1], self.img_size, sizes[2].bool())
        if self.policy == "trivialaugment":
            s = self.sampler
            generator = batch_generator(self.device, s.seed, s.epoch, step)
            host = torch.Generator().manual_seed(seed_for("policy", s.seed, s.epoch, step))
            images = trivial_augment(images, *draw(generator, host, s.global_batch, s.rank * s.local_batch, len(rows)))
        return images

    def host_crops(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The host's part: each image's box copied out of the memory map into one padded
        uint8 batch (B, H, W, C), and (3, B) int64 of box heights, widths and flips."""
        s, split = self.sampler, self.split
        draws = image_uniforms(s.seed, s.epoch, rows)
        top, left, height, width = resized_crop_boxes(split.index[rows, 1], split.index[rows, 2], draws, self.scale)
        crops = self.pinned((len(rows), height.max(), width.max(), split.channels))
        for b, i in enumerate(rows):
            box = split.image(i)[top[b] : top[b] + height[b], left[b] : left[b] + width[b]]
            crops[b, : height[b], : width[b]] = box
        return crops, np.stack([height, width, flips(draws) & self.flip]).astype(np.int64)

    def pinned(self, shape: tuple[int, ...]) -> np.ndarray:
        """A host buffer (uninitialised: outside each box the resize weights are zero)."""
        tensor = torch.empty(shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        return tensor.numpy()

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """Pinned first on a GPU: a copy from pageable memory would wait for the queued kernels."""
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)
