"""A class-folder tree (an ImageNet subset, Imagenette, your own data): `root/train/<class>/*`
and `root/val/<class>/*`, decoded and augmented by DataLoader workers with torchvision
transforms v2, batched as uint8 and normalised on the device.

`classes` restricts the classes: null for all, an integer N for the first N in sorted
order (ImageNet-100 style), or a list of folder names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from vit.errors import ConfigError
from vit.training.data import DataError
from vit.training.data.batches import ShardedBatches
from vit.training.data.source import DataSource
from vit.training.seeds import seed_for

POLICIES = {"none": None, "randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide}


class ImageFolderData(DataSource):
    def __init__(
        self,
        *,
        root: str,
        classes: int | list[str] | None = None,
        policy: str = "none",
        scale: tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        crop_pct: float = 0.875,
        num_workers: int = 8,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if policy not in POLICIES:
            raise ConfigError(f"data: policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.root, self.classes, self.num_workers = Path(root), classes, num_workers
        size = self.img_size
        augment = [v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True)]
        augment += [v2.RandomHorizontalFlip()] if flip else []
        augment += [POLICIES[policy]()] if POLICIES[policy] else []
        self.train_transform = v2.Compose([v2.ToImage(), *augment, v2.ToDtype(torch.uint8, scale=True)])
        self.val_transform = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(round(size / crop_pct), antialias=True),
                v2.CenterCrop(size),
                v2.ToDtype(torch.uint8, scale=True),
            ]
        )

    def folder(self, split: str, class_names: list[str] | None = None) -> datasets.ImageFolder:
        path = self.root / split
        if not path.is_dir():
            raise DataError(
                f"{self.name}: no folder {path.resolve()} (expected {split}/<class>/<image> under data.root)"
            )

        def select(names: list[str]) -> list[str]:
            if class_names is not None:
                return class_names
            if isinstance(self.classes, int):
                return names[: self.classes]
            if self.classes is not None:
                missing = sorted(set(self.classes) - set(names))
                if missing:
                    raise DataError(f"{path}: no class folder(s) {', '.join(missing)}")
                return sorted(self.classes)
            return names

        transform = self.train_transform if split == "train" else self.val_transform
        return ClassFolders(path, transform, select)

    def loaders(self, device: torch.device, rank: int, world: int, seed: int):
        train = self.folder("train")
        if len(train.classes) != self.num_classes:
            raise DataError(
                f"data: {len(train.classes)} classes under {self.root / 'train'} but num_classes is "
                f"{self.num_classes}; set data.num_classes={len(train.classes)}"
            )
        val = self.folder("val", train.classes)  # the same label for the same class name
        # its own generator: the DataLoader draws a worker seed per epoch, which must not come
        # from (and shift) the training loop's stream, or a resumed run would drift
        common = dict(
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )
        make = lambda ds, train_: DeviceLoader(  # noqa: E731
            DataLoader(
                ds,
                batch_sampler=SeededBatches(ShardedBatches(len(ds), self.batch_size, rank, world, seed, train_)),
                **common,
            ),
            device,
        )
        return make(train, True), make(val, False)


class DeviceLoader:
    """A DataLoader whose batches arrive on the device, resumable at a batch."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.loader.batch_sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.loader.batch_sampler)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)

    def __iter__(self):
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class SeededBatches:
    """Batches of (seed, index) pairs: each image is augmented from its own seed, made of
    (run seed, epoch, index), so its crop, flip and policy are the same whichever worker
    loads it, in every run with that seed, and after a resume mid-epoch."""

    def __init__(self, batches: ShardedBatches):
        self.batches = batches

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        seed, epoch = self.batches.seed, self.batches.epoch
        for index in self.batches:
            yield [(seed_for("image", seed, epoch, i), i) for i in index.tolist()]


class ClassFolders(datasets.ImageFolder):
    """torchvision's ImageFolder over a chosen subset of the class folders, indexed by
    (seed, index) pairs: the transform draws from a random stream seeded for that image."""

    def __init__(self, root: Path, transform, select):
        self.select = select  # before super().__init__, which calls find_classes
        super().__init__(str(root), transform=transform)

    def __getitem__(self, item):
        seed, index = item
        with torch.random.fork_rng(devices=[]):  # leaves the caller's stream alone (num_workers=0)
            torch.manual_seed(seed)
            return super().__getitem__(index)

    def find_classes(self, directory):
        names = self.select(super().find_classes(directory)[0])
        return names, {name: i for i, name in enumerate(names)}
