"""Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test images of clothing,
28x28 grey, 10 classes. Held in memory as uint8, like CIFAR.

Read from the four standard idx files (`train-images-idx3-ubyte.gz` and the others, gzipped
or not) in `root`, or in `root/FashionMNIST/raw/`, where torchvision's `FashionMNIST`
downloads them (with `download: true`, when the network allows), or else in
/usr/share/datasets/fashion-mnist, where Debian's `dataset-fashion-mnist` package puts them
(how they reach an offline machine).
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vit.training.data import DataError
from vit.training.data.in_memory import InMemoryData, Split

DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # where `apt-get install dataset-fashion-mnist` puts them
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class FashionMnist(InMemoryData):
    def __init__(self, *, root: str, download: bool = True, train_subset: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.root, self.download, self.train_subset = Path(root), download, train_subset

    def splits(self) -> tuple[Split, Split]:
        folder = self.folder()
        train, test = (self.load(folder, *FILES[split]) for split in ("train", "test"))
        if self.train_subset is not None and self.train_subset < len(train.labels):
            # a fixed subset, the same for every run: the first images of a seeded permutation
            keep = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(0))
            train = Split(train.images[keep[: self.train_subset]], train.labels[keep[: self.train_subset]])
        return train, test

    def folder(self) -> Path:
        """The folder holding all four files, downloading them there if allowed."""
        candidates = [self.root, self.root / "FashionMNIST" / "raw", DEBIAN]
        for folder in candidates:
            if all(find(folder, name) for names in FILES.values() for name in names):
                return folder
        if self.download:
            from torchvision.datasets import FashionMNIST

            try:
                FashionMNIST(str(self.root), download=True)
                return candidates[1]
            except Exception as e:  # offline: say what to put where
                raise DataError(f"{self.missing_message()} (download failed: {type(e).__name__}: {e})") from None
        raise DataError(self.missing_message())

    def missing_message(self) -> str:
        names = ", ".join(f"{name}.gz" for names in FILES.values() for name in names)
        return (
            f"fashion_mnist not found: put {names} (gzipped or not) in {self.root.resolve()}/; offline, "
            f"Debian's dataset-fashion-mnist package installs them in /usr/share/datasets/fashion-mnist"
        )

    def load(self, folder: Path, images_name: str, labels_name: str) -> Split:
        images = torch.from_numpy(read_idx(find(folder, images_name)).copy())[:, None]  # (N, 1, 28, 28)
        labels = torch.from_numpy(read_idx(find(folder, labels_name)).astype(np.int64))
        if len(images) != len(labels):
            raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels in {images_name}, {labels_name}")
        if images.shape[-1] != self.img_size:  # resized once, as the digits are
            scaled = F.interpolate(images.float(), size=(self.img_size,) * 2, mode="bilinear", antialias=True)
            images = scaled.round().clamp(0, 255).to(torch.uint8)
        return Split(images, labels)


def find(folder: Path, name: str) -> Path | None:
    for path in (folder / f"{name}.gz", folder / name):
        if path.is_file():
            return path
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (LeCun's MNIST format): two zero bytes, the type 0x08,
    the number of dimensions, each dimension as a big-endian uint32, then the data."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        try:
            raw = f.read()
        except (OSError, EOFError) as e:  # a damaged gzip stream
            raise DataError(f"{path} cannot be read: {e}") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DataError(f"{path} holds {data.size} values where its header promises {math.prod(shape)}: truncated")
    return data.reshape(shape)
