"""RandomResizedCrop's boxes for a whole batch, each image's drawn from (seed, epoch, index).

The distribution is torchvision's (`RandomResizedCrop`): up to 10 attempts of an area
fraction uniform in `scale` and an aspect ratio log-uniform in `ratio`, the first box that
fits taken at a uniform position, else the whole image cropped to the nearest allowed ratio
at the centre. Here all 10 attempts are drawn at once for every image, in numpy, from a
counter-based stream (splitmix64 of the image's index), so a batch costs no per-image
generators and an image's box depends on nothing but (seed, epoch, index).
"""

from __future__ import annotations

import math

import numpy as np

from vit.training.seeds import seed_for

ATTEMPTS = 10
DRAWS = 2 * ATTEMPTS + 3  # (area, ratio) per attempt, then top, left and the flip

_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def image_uniforms(seed: int, epoch: int, indices: np.ndarray, count: int = DRAWS) -> np.ndarray:
    """(N, count) floats uniform in [0, 1): the stream of each image, by its dataset index."""
    key = np.uint64(seed_for("crop", seed, epoch))
    counter = indices.astype(np.uint64)[:, None] * np.uint64(count) + np.arange(1, count + 1, dtype=np.uint64)
    z = key + counter * _GOLDEN  # splitmix64: the counter-th output of the stream seeded by key
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def resized_crop_boxes(
    heights: np.ndarray,
    widths: np.ndarray,
    uniforms: np.ndarray,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, height, width) of one box per image, int64 arrays, from `uniforms` (N, DRAWS)."""
    h_img, w_img = heights.astype(np.float64)[:, None], widths.astype(np.float64)[:, None]
    area = h_img * w_img * (scale[0] + (scale[1] - scale[0]) * uniforms[:, 0:ATTEMPTS])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * uniforms[:, ATTEMPTS : 2 * ATTEMPTS])
    w = np.round(np.sqrt(area * aspect)).astype(np.int64)  # round half to even, as Python's round
    h = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    found = fits.any(axis=1)
    first = fits.argmax(axis=1)
    rows = np.arange(len(heights))
    h, w = h[rows, first], w[rows, first]
    top = np.floor(uniforms[:, 2 * ATTEMPTS] * (heights - h + 1)).astype(np.int64)
    left = np.floor(uniforms[:, 2 * ATTEMPTS + 1] * (widths - w + 1)).astype(np.int64)
    if not found.all():
        fallback = ~found
        ch, cw = centre_boxes(heights[fallback], widths[fallback], ratio)
        h[fallback], w[fallback] = ch, cw
        top[fallback], left[fallback] = (heights[fallback] - ch) // 2, (widths[fallback] - cw) // 2
    return top, left, h, w


def centre_boxes(heights: np.ndarray, widths: np.ndarray, ratio: tuple[float, float]):
    """torchvision's fallback: the whole image, cut to the nearest ratio in range."""
    lo, hi = min(ratio), max(ratio)
    in_ratio = widths / heights
    h, w = heights.astype(np.int64).copy(), widths.astype(np.int64).copy()
    narrow, wide = in_ratio < lo, in_ratio > hi
    h[narrow] = np.round(widths[narrow] / lo).astype(np.int64)
    w[wide] = np.round(heights[wide] * hi).astype(np.int64)
    return h, w


def flips(uniforms: np.ndarray) -> np.ndarray:
    """Whether each image is mirrored (probability 1/2), from its last draw."""
    return uniforms[:, 2 * ATTEMPTS + 2] < 0.5
