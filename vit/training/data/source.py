"""What every data config builds: sizes, normalisation, the global batch size and mixing.

Subclasses add `loaders(device, rank, world, seed) -> (train, val)`: iterables of
(uint8 images, int64 labels) on the device, with `set_epoch(epoch, start_batch)`,
`len()` (batches for this rank) and `num_samples`.
"""

from __future__ import annotations

from vit.errors import ConfigError


class DataSource:
    """What every data config builds: sizes, normalisation, batch size and mixing."""

    def __init__(
        self,
        *,
        name: str,
        img_size: int,
        in_chans: int,
        num_classes: int | None,
        batch_size: int,
        mean: list[float],
        std: list[float],
        mixup: float = 0.0,
        cutmix: float = 0.0,
    ):
        if len(mean) != in_chans or len(std) != in_chans:
            raise ConfigError(f"data: mean and std need {in_chans} values, one per channel")
        if (mixup or cutmix) and batch_size % 2:
            raise ConfigError(f"data: mixup and cutmix need an even batch size, got {batch_size}")
        self.name, self.img_size, self.in_chans, self.num_classes = name, img_size, in_chans, num_classes
        self.batch_size, self.mean, self.std = batch_size, list(mean), list(std)
        self.mixup, self.cutmix = mixup, cutmix

    def class_count(self) -> int:
        """The number of classes, for a config that leaves data.num_classes to the data."""
        if self.num_classes is None:
            raise ConfigError(f"data: {self.name} needs data.num_classes")
        return self.num_classes
