"""A class-folder tree (an ImageNet subset, Imagenette, your own data): `root/train/<class>/*`
and `root/val/<class>/*`, decoded and augmented by DataLoader workers with torchvision
transforms v2, batched as uint8 and normalised on the device.

`classes` restricts the classes: null for all, an integer N for the first N in sorted
order (ImageNet-100 style), or a list of folder names. `num_classes` left null is the number
of classes chosen; given, it must agree.

`cache=true` decodes each image once into a uint8 cache on disk (decoded_cache.py) and
trains from its memory map, with the crop, flip and policy run in batches on the device
(cached_batches.py): no loading processes, no per-epoch decoding.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from vit.errors import ConfigError
from vit.training.data import DataError
from vit.training.data.batches import ShardedBatches
from vit.training.data.source import DataSource
from vit.training.seeds import seed_for

POLICIES = {"none": None, "randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide}
CACHED_POLICIES = ("none", "trivialaugment")  # the ones with a batched version on the device


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
        num_workers: int | str = "auto",
        cache: bool = False,
        cache_dir: str = "outputs/cache",
        cache_size: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if policy not in POLICIES:
            raise ConfigError(f"data: policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if cache and policy not in CACHED_POLICIES:
            raise ConfigError(f"data: with cache=true, policy must be one of {', '.join(CACHED_POLICIES)}")
        if cache_size is not None and cache_size < self.img_size:
            raise ConfigError(f"data: cache_size {cache_size} is below img_size {self.img_size}")
        self.root, self.classes = Path(root), classes
        self.num_workers = workers(num_workers)
        self.cache, self.cache_dir = cache, Path(cache_dir)
        # stored a little above the training size, as the validation resize: room to crop
        self.cache_size = cache_size or round(self.img_size / crop_pct)
        self.scale, self.flip, self.policy, self.crop_pct = tuple(scale), flip, policy, crop_pct
        size = self.img_size
        augment = [v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True)]
        augment += [v2.RandomHorizontalFlip()] if flip else []
        augment += [POLICIES[policy]()] if POLICIES[policy] else []
        # on the decoded PIL image, then one conversion to a uint8 tensor: each v2 step on a
        # tensor costs more Python than on PIL, and small images are all overhead
        self.train_transform = v2.Compose([*augment, v2.PILToTensor()])
        self.val_transform = v2.Compose(
            [v2.Resize(round(size / crop_pct), antialias=True), v2.CenterCrop(size), v2.PILToTensor()]
        )

    def folder(self, split: str, class_names: list[str] | None = None) -> datasets.ImageFolder:
        """One split's images, labelled by class_names (default: the classes chosen from it)."""
        path = self.split_path(split)
        names = class_names if class_names is not None else self.choose(path)
        transform = self.train_transform if split == "train" else self.val_transform
        return ClassFolders(path, transform, names, mode="L" if self.in_chans == 1 else "RGB")

    def split_path(self, split: str) -> Path:
        path = self.root / split
        if not path.is_dir():
            raise DataError(
                f"{self.name}: no folder {path.resolve()} (expected {split}/<class>/<image> under data.root)"
            )
        return path

    def choose(self, path: Path) -> list[str]:
        """The class folders data.classes asks for, in sorted order."""
        names = sorted(entry.name for entry in path.iterdir() if entry.is_dir())
        if not names:
            raise DataError(f"{self.name}: no class folders under {path.resolve()} (expected <class>/<image> there)")
        if isinstance(self.classes, int):
            return names[: self.classes]
        if self.classes is not None:
            missing = sorted(set(self.classes) - set(names))
            if missing:
                raise DataError(f"{path}: no class folder(s) {', '.join(missing)}")
            return sorted(self.classes)
        return names

    def class_count(self) -> int:
        return len(self.choose(self.split_path("train")))

    def loaders(self, device: torch.device, rank: int, world: int, seed: int):
        train = self.folder("train")
        if self.num_classes is not None and len(train.classes) != self.num_classes:
            raise DataError(
                f"data: {len(train.classes)} classes chosen under {self.root / 'train'} but data.num_classes is "
                f"{self.num_classes}; leave it out (null) to use the number of classes"
            )
        val = self.folder("val", train.classes)  # the same label for the same class name
        if self.cache:
            return self.cached_loaders(train, val, device, rank, world, seed)
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

    def cached_loaders(self, train: ClassFolders, val: ClassFolders, device, rank: int, world: int, seed: int):
        from vit.training.data.cache_format import CacheSpec
        from vit.training.data.cached_batches import CachedBatches
        from vit.training.data.decoded_cache import open_cache

        mode = "L" if self.in_chans == 1 else "RGB"
        specs = {
            "train": CacheSpec("train", mode, self.cache_size),
            "val": CacheSpec("val", mode, self.img_size, round(self.img_size / self.crop_pct)),
        }
        loaders = []
        for split, folders in (("train", train), ("val", val)):
            cache = open_cache(
                folders.samples, Path(folders.root), folders.classes, specs[split], self.cache_dir, self.num_workers
            )
            sampler = ShardedBatches(len(cache), self.batch_size, rank, world, seed, train=split == "train")
            args = (cache, device, sampler, self.img_size, self.scale, self.flip, self.policy, self.num_workers)
            loaders.append(CachedBatches(*args))
        return tuple(loaders)


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
    """Batches of (run seed, epoch, index): each image is augmented from its own stream, seeded
    by those three, so its crop, flip and policy are the same whichever worker loads it, in
    every run with that seed, and after a resume mid-epoch."""

    def __init__(self, batches: ShardedBatches):
        self.batches = batches

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        seed, epoch = self.batches.seed, self.batches.epoch
        for index in self.batches:  # the seeds are hashed in the loading processes, not here
            yield [(seed, epoch, i) for i in index.tolist()]


def load_image(path: str, mode: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert(mode)


def workers(num_workers: int | str) -> int:
    """auto: one loading process per core this process may use, shared out among the training
    processes on this machine (torchrun's LOCAL_WORLD_SIZE), at most 8 each; the training
    step's threads share those cores, and more processes than cores only fight over them."""
    if num_workers != "auto":
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data: num_workers must be auto or a whole number >= 0, got {num_workers!r}")
        return num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


class ClassFolders(datasets.ImageFolder):
    """torchvision's ImageFolder over a chosen subset of the class folders, indexed by
    (run seed, epoch, index): the transform draws from a random stream seeded for that image."""

    def __init__(self, root: Path, transform, class_names: list[str], mode: str = "RGB"):
        self.class_names = class_names  # before super().__init__, which calls find_classes
        super().__init__(str(root), transform=transform, loader=partial(load_image, mode=mode))

    def __getitem__(self, item):
        run_seed, epoch, index = item
        seed = seed_for("image", run_seed, epoch, index)
        # the CPU generator only: torch.manual_seed would also queue a seed for every lazy
        # accelerator backend, with a captured stack each time (about 1 ms per image)
        with torch.random.fork_rng(devices=[]):  # leaves the caller's stream alone (num_workers=0)
            torch.default_generator.manual_seed(seed)
            return super().__getitem__(index)

    def find_classes(self, directory):
        return self.class_names, {name: i for i, name in enumerate(self.class_names)}
