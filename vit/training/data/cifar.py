"""CIFAR-10 and CIFAR-100 through torchvision's own parser, held in memory as uint8.

`root` holds the extracted `cifar-10-batches-py/` (or `cifar-100-python/`) folder, or the
`.tar.gz` archive, which is then extracted; with `download: true` a missing archive is
fetched. Offline and missing, the run stops with one line saying which file to put where.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import datasets

from vit.errors import ConfigError
from vit.training.data import DataError
from vit.training.data.in_memory import InMemoryData, Split

DATASETS = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


class Cifar(InMemoryData):
    def __init__(self, *, root: str, download: bool = True, verify_checksums: bool = True, **kwargs):
        super().__init__(**kwargs)
        if self.name not in DATASETS:
            raise ConfigError(f"data: name must be one of {', '.join(DATASETS)}, got {self.name!r}")
        self.root, self.download, self.verify_checksums = Path(root), download, verify_checksums

    def dataset_class(self) -> type[datasets.CIFAR10]:
        base = DATASETS[self.name]
        if self.verify_checksums:
            return base
        # same parser, without the md5 check of each file (for re-packed or generated archives)
        return type(
            base.__name__,
            (base,),
            {
                "train_list": [[f, None] for f, _ in base.train_list],
                "test_list": [[f, None] for f, _ in base.test_list],
                "meta": {**base.meta, "md5": None},
                "tgz_md5": None,
            },
        )

    def load(self, train: bool) -> Split:
        cls = self.dataset_class()
        archive = self.root / cls.filename
        try:
            dataset = cls(self.root, train=train, download=False)
        except RuntimeError:
            if not (archive.exists() or self.download):
                raise DataError(self.missing_message(cls)) from None
            try:  # extracts a present archive (no network), or downloads one
                dataset = cls(self.root, train=train, download=True)
            except Exception as e:
                raise DataError(f"{self.missing_message(cls)} ({type(e).__name__}: {e})") from None
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.tensor(dataset.targets, dtype=torch.long))

    def missing_message(self, cls) -> str:
        return (
            f"{self.name} not found: put {cls.filename} ({cls.url}) in {self.root.resolve()}/, "
            f"or its extracted {cls.base_folder}/ folder"
        )

    def splits(self) -> tuple[Split, Split]:
        return self.load(train=True), self.load(train=False)
