"""Torch's CPU thread count for a stretch of work, put back afterwards.

A library function that sets it for its own work (a loader timed per core, evaluations beside
training runs) must not leave the caller's process changed: a model trained next in the same
process would sum in another order and part from a run of the same seed in bf16 and fp32."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
