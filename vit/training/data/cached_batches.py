"""Batches from a decoded cache: read from the memory map, moved as uint8, augmented on the device.

Training: each image's RandomResizedCrop box and flip are drawn from (seed, epoch, index)
(crop_boxes.py). For a GPU the host copies only the boxes out of the memory map into one
padded uint8 batch, and the GPU resizes them all at once (resized_crop.py); on a CPU each box
is resized by torch's own kernel. Then the policy runs on the whole batch.
Each process reads only the images of its own slice of the global batch.
Validation: the stored images are already at their final size.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from vit.training.data.augment import batch_generator
from vit.training.data.batches import SampledBatches, ShardedBatches
from vit.training.data.crop_boxes import flips, image_uniforms, resized_crop_boxes
from vit.training.data.decoded_cache import DecodedSplit
from vit.training.data.prefetch import ahead
from vit.training.data.resized_crop import resize_crops, resize_each
from vit.training.data.trivial_augment import draw, trivial_augment
from vit.training.seeds import seed_for


@dataclass
class Boxes:
    """One batch's crop boxes (int64 arrays) and flips (bool)."""

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    mirror: np.ndarray


class CachedBatches(SampledBatches):
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
        threads: int = 0,
    ):
        self.split, self.device, self.sampler, self.img_size = split, device, sampler, img_size
        self.scale, self.flip, self.policy = tuple(scale), flip, policy
        self.threads = max(1, threads)
        self.batched = device.type != "cpu"  # one padded batch and two matrix products (a GPU's way)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="crops") if threads > 1 else None

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def __iter__(self):
        s = self.sampler
        batches = (self.batch(step, index.numpy()) for step, index in enumerate(s, start=s.start if s.train else 0))
        # on a GPU the host copies the next batches' boxes while the GPU steps. On a CPU the
        # crops are made between steps: made ahead in a thread, they would take a core from one
        # of the step's threads, and the others would wait for it at every barrier
        return ahead(batches) if s.train and self.batched else batches

    def batch(self, step: int, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.augmented(rows, step) if self.sampler.train else self.stored(rows)
        return images, self.to_device(self.split.labels[rows])

    def stored(self, rows: np.ndarray) -> torch.Tensor:
        """Validation images as stored: (B, C, S, S)."""
        batch = np.stack([self.split.image(i) for i in rows])
        return self.to_device(batch).permute(0, 3, 1, 2).contiguous()

    def augmented(self, rows: np.ndarray, step: int) -> torch.Tensor:
        boxes = self.boxes(rows)
        if self.batched:
            crops = self.host_crops(rows, boxes)
            sizes = self.to_device(np.stack([boxes.height, boxes.width, boxes.mirror]).astype(np.int64))
            images = resize_crops(self.to_device(crops), sizes[0], sizes[1], self.img_size, sizes[2].bool())
        else:  # a CPU: torch's own kernel per image, with no padding and no dense weights
            crops = [torch.from_numpy(self.box(i, boxes, b)) for b, i in enumerate(rows)]
            images = resize_each(crops, self.img_size, boxes.mirror.tolist())
        if self.policy == "trivialaugment":
            s = self.sampler
            generator = batch_generator(self.device, s.seed, s.epoch, step)
            host = torch.Generator().manual_seed(seed_for("policy", s.seed, s.epoch, step))
            images = trivial_augment(images, *draw(generator, host, s.global_batch, s.rank * s.local_batch, len(rows)))
        return images

    def boxes(self, rows: np.ndarray) -> Boxes:
        """Each image's RandomResizedCrop box and flip, from (seed, epoch, index)."""
        s, index = self.sampler, self.split.index
        draws = image_uniforms(s.seed, s.epoch, rows)
        return Boxes(*resized_crop_boxes(index[rows, 1], index[rows, 2], draws, self.scale), flips(draws) & self.flip)

    def box(self, i: int, boxes: Boxes, b: int) -> np.ndarray:
        """A copy of image i's box (height, width, channels), out of the memory map."""
        top, left = boxes.top[b], boxes.left[b]
        return np.array(self.split.image(i)[top : top + boxes.height[b], left : left + boxes.width[b]])

    def host_crops(self, rows: np.ndarray, boxes: Boxes) -> torch.Tensor:
        """What the host does for a GPU: each box copied out of the memory map into one padded
        uint8 batch (B, H, W, C), by `threads` threads (numpy copies run without the GIL).
        Uninitialised around the boxes: the resize gives those pixels weight zero."""
        shape = (len(rows), boxes.height.max(), boxes.width.max(), self.split.channels)
        # the tensor itself travels to the GPU: its pinned block then stays reserved until the
        # copy is done (a numpy view made into a new tensor would not tell the allocator)
        batch = torch.empty(shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        crops = batch.numpy()

        def copy(part: range) -> None:
            for b in part:
                top, left, h, w = boxes.top[b], boxes.left[b], boxes.height[b], boxes.width[b]
                crops[b, :h, :w] = self.split.image(rows[b])[top : top + h, left : left + w]

        parts = [range(k, len(rows), self.threads) for k in range(self.threads)]
        list(self.pool.map(copy, parts)) if self.pool else copy(range(len(rows)))
        return batch

    def to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Pinned first on a GPU: a copy from pageable memory would wait for the queued kernels."""
        tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
        if self.device.type == "cuda" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)
