"""A decoded cache of one class-folder split: each image decoded once, kept as uint8 on disk,
memory-mapped by training, never loaded whole.

One folder per (data.root, split, classes, channels) under data.cache_dir, holding:
  pixels.u8      every image's pixels (height, width, channels), one after another
  index.npy      (N, 3) int64: byte offset, height, width of each image
  labels.npy     (N,) int64
  manifest.json  what it was built from (each file's size and mtime, the classes, the sizes)
                 and a digest of each chunk of images (cache_format.py)
Training images are stored with their shorter side at most `size` (torchvision's Resize, so
the crop sees the whole image); validation images at their final resize and centre crop.

`open_cache` uses the folder when it matches the images and settings it is asked for, and
otherwise (re)builds it (cache_build.py), saying why in one line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vit.training.data import DataError, cache_format
from vit.training.data.cache_format import FORMAT, CacheSpec

SAMPLED_CHUNKS = 8  # chunks whose digest is checked each time a cache is opened

log = logging.getLogger("vit")


@dataclass
class DecodedSplit:
    """A cache opened for reading."""

    folder: Path
    pixels: np.ndarray  # uint8, flat: a view of the memory map
    index: np.ndarray  # (N, 3) int64: offset, height, width
    labels: np.ndarray  # (N,) int64
    channels: int

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        """Image i as a (height, width, channels) view of the memory map."""
        offset, h, w = self.index[i]
        return self.pixels[offset : offset + h * w * self.channels].reshape(h, w, self.channels)


def cache_folder(cache_dir: Path, split_root: Path, class_names: Sequence[str], mode: str) -> Path:
    """Where the cache of these images lives: one folder per source, split and class choice."""
    key = "\n".join([str(split_root.resolve()), mode, *class_names])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return cache_dir / f"{split_root.parent.name}-{split_root.name}-{digest}"


def fingerprint(samples: Sequence[tuple[str, int]], split_root: Path, classes: Sequence[str], spec: CacheSpec):
    """Everything the content depends on: the settings and each file's path, label, size and mtime."""
    files = []
    for path, label in samples:
        stat = os.stat(path)
        files.append([os.path.relpath(path, split_root), label, stat.st_size, stat.st_mtime_ns])
    return {"format": FORMAT, "spec": asdict(spec), "classes": list(classes), "files": files}


def open_cache(
    samples: Sequence[tuple[str, int]],
    split_root: Path,
    classes: Sequence[str],
    spec: CacheSpec,
    cache_dir: Path,
    workers: int,
) -> DecodedSplit:
    """The cache of these samples, built (or rebuilt) first when it is missing, stale or damaged."""
    from vit.training.data.cache_build import build

    folder = cache_folder(Path(cache_dir), split_root, classes, spec.mode)
    with build_lock(folder):  # one builder per cache; the other processes wait, then read it
        wanted = fingerprint(samples, split_root, classes, spec)
        opened = open_if_whole(folder, wanted)
        if isinstance(opened, DecodedSplit):
            return opened
        if opened != "absent":
            log.info(f"decoded cache {folder}: {opened}; rebuilding")
        build(folder, wanted, samples, spec, workers)
        return read(folder)


@contextmanager
def build_lock(folder: Path):
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if multiprocessing.parent_process() is not None:  # the builder's own loading process
                raise DataError(
                    "the decoded cache's loading processes import the main script again: put its code under "
                    "`if __name__ == '__main__':`"
                ) from None
            log.info(f"decoded cache {folder}: another process is building it; waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def open_if_whole(folder: Path, wanted: dict) -> DecodedSplit | str:
    """The cache in `folder`, opened, when it is whole and built from `wanted`; else why not."""
    if not folder.exists():
        return "absent"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        built = manifest["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"damaged (manifest.json: {e})"
    change = describe_change(built, wanted)
    if change:
        return change
    try:
        split = read(folder, manifest)
    except (OSError, ValueError) as e:
        return f"damaged ({e})"
    return damage(split, manifest) or split


def describe_change(built: dict, wanted: dict) -> str | None:
    """What differs between the sources of two caches, in a few words."""
    if built.get("format") != wanted["format"]:
        return f"cache format {built.get('format')} -> {wanted['format']}"
    if built["spec"] != wanted["spec"]:
        changed = [f"{k} {built['spec'].get(k)} -> {v}" for k, v in wanted["spec"].items() if built["spec"].get(k) != v]
        return "settings changed: " + ", ".join(changed)
    if built["classes"] != wanted["classes"]:
        return "the classes changed"
    before = {f[0]: f[1:] for f in built["files"]}
    after = {f[0]: f[1:] for f in wanted["files"]}
    added, removed = len(after.keys() - before.keys()), len(before.keys() - after.keys())
    modified = sum(1 for name in after.keys() & before.keys() if before[name] != after[name])
    if added or removed or modified:
        return f"the folder changed: {added} files added, {removed} removed, {modified} modified"
    return None


def damage(split: DecodedSplit, manifest: dict) -> str | None:
    """A cut file, an index that does not fit, or a sampled chunk whose bytes changed."""
    index, labels, pixels, size = split.index, split.labels, split.pixels, split.pixels.size
    count, channels, total = len(manifest["fingerprint"]["files"]), manifest["channels"], manifest["bytes"]
    if size != total:
        return f"damaged (pixels.u8 has {size} bytes, {total} expected)"
    if index.shape != (count, 3) or labels.shape != (count,):
        return "damaged (index.npy or labels.npy does not match the manifest)"
    ends = index[:, 0] + index[:, 1] * index[:, 2] * channels
    if count and (index[0, 0] != 0 or ends[-1] != total or (index[1:, 0] != ends[:-1]).any()):
        return "damaged (index.npy does not tile pixels.u8)"
    digests = manifest["chunk_digests"]
    chunk = cache_format.CHUNK
    for c in sampled_chunks(len(digests)):
        if cache_format.chunk_digest(pixels, index, channels, c) != digests[c]:
            return f"damaged (the pixels of images {c * chunk} to {min(count, (c + 1) * chunk) - 1} changed)"
    return None


def sampled_chunks(chunks: int) -> list[int]:
    """The chunks checked at each opening: the first, the last and some between."""
    if chunks <= SAMPLED_CHUNKS:
        return list(range(chunks))
    return sorted(set(np.linspace(0, chunks - 1, SAMPLED_CHUNKS).round().astype(int).tolist()))


def read(folder: Path, manifest: dict | None = None) -> DecodedSplit:
    manifest = manifest or json.loads((folder / "manifest.json").read_text())
    path = folder / "pixels.u8"
    pixels = np.zeros(0, np.uint8)
    if path.stat().st_size:  # a plain view of the map: slicing a np.memmap costs 8 us, a view 1.4
        pixels = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
    index, labels = np.load(folder / "index.npy"), np.load(folder / "labels.npy")
    return DecodedSplit(folder, pixels, index, labels, manifest["channels"])
