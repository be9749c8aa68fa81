"""The decoded cache's format: what decides its content (`CacheSpec`), the unit it is built,
resumed and checked in (`CHUNK` images), and a chunk's digest. Shared by the code that builds
a cache (cache_build.py) and the code that opens it (decoded_cache.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

FORMAT = 1
CHUNK = 256  # images per unit of building, resuming and checking


@dataclass(frozen=True)
class CacheSpec:
    """What decides a cache's content besides the files."""

    split: str  # "train": shorter side at most `size`; "val": resize to `resize`, centre crop `size`
    mode: str  # PIL mode: "RGB" or "L"
    size: int
    resize: int = 0  # val only


def chunk_digest(pixels: np.ndarray, index: np.ndarray, channels: int, chunk: int) -> str:
    first, last = chunk * CHUNK, min(len(index), (chunk + 1) * CHUNK) - 1
    start, (offset, h, w) = index[first, 0], index[last]
    return hashlib.blake2b(pixels[start : offset + h * w * channels], digest_size=16).hexdigest()
