"""Small data in the real on-disk formats, for the real loaders."""

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_cifar10_archive(root: Path, per_batch: int = 16, seed: int = 0) -> Path:
    """cifar-10-python.tar.gz as torchvision expects it: pickled dicts of uint8 rows (N, 3*32*32)
    in channel-major order, with labels, in cifar-10-batches-py/. The class is the brightest
    channel's quadrant, so a model can learn something."""
    rng = np.random.default_rng(seed)
    folder = root / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
        for i, label in enumerate(labels):
            r, c = divmod(int(label) % 4, 2)
            images[i, int(label) % 3, r * 16 : r * 16 + 16, c * 16 : c * 16 + 16] = 250
        return {"data": images.reshape(n, -1), "labels": labels.tolist()}

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(per_batch), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def make_class_folders(root: Path, classes=("cat", "dog", "fox"), per_class=(12, 4), size=20) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png; each class has its own colour."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 50, (size, size + 4, 3), dtype=np.uint8)
                pixels[..., k % 3] += 200
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def make_jpeg_folders(root: Path, classes=("ant", "bee"), per_class=(6, 2), size=(50, 37), seed: int = 0) -> Path:
    """root/{train,val}/<class>/*.jpg of noise, each `size` (width, height) as a camera's are."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg", quality=90)
    return root


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An idx file of unsigned bytes, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def make_fashion_mnist(root: Path, train: int = 64, test: int = 32, gz: bool = True, seed: int = 0) -> Path:
    """The four Fashion-MNIST idx files with random 28x28 images and labels 0-9."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    return root
