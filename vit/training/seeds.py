"""Every random stream of a run, seeded in one place.

A stream's seed is a hash of (purpose, run seed, counters...) made by numpy's SeedSequence,
so two purposes never share a stream, and no stream at one step equals another's at the
next (as seeds made by adding offsets would). The counters say which draw it is: the epoch
for the data order, (epoch, step) for a batch's augmentation, (epoch, index) for an image.
"""

from __future__ import annotations

import numpy as np

PURPOSES = (
    "init",  # the model's initial weights: the same on every process
    "process",  # each process's own global streams (dropout, drop path)
    "order",  # the order of an epoch's samples
    "batch",  # a global batch's crop, flip and policy draws, on the device
    "policy",  # a batch's TrivialAugment magnitudes, on the host
    "image",  # one image's augmentation when loaded from files
    "mixup",  # a step's Mixup/CutMix draws: the same on every process
    "crop",  # one image's crop box and flip when trained from the decoded cache
)


def seed_for(purpose: str, seed: int, *counters: int) -> int:
    """A 63-bit seed (fits torch's and, masked, numpy's) for this purpose and these counters."""
    if purpose not in PURPOSES:
        raise KeyError(f"unknown random stream {purpose!r}: add it to PURPOSES")
    words = [PURPOSES.index(purpose), len(counters), seed % 2**64, *(c % 2**64 for c in counters)]
    low, high = np.random.SeedSequence(words).generate_state(2, np.uint32).tolist()
    return (high << 32 | low) >> 1


def numpy_seed(purpose: str, seed: int, *counters: int) -> int:
    """The same stream's seed for `np.random.seed`, which takes 32 bits."""
    return seed_for(purpose, seed, *counters) & 0xFFFF_FFFF
