"""The machine's own matrix-product rate: what a training step's FLOP/s is measured against.

A GPU has a data sheet's peak (benchmark.PEAK_TFLOPS); a CPU's depends on its cores, clocks,
vector units and the kernel library, so it is measured: one large square product in each
precision, on the threads torch uses, in the same run as the steps it is compared with.
Its fraction is the CPU's counterpart of MFU: how much of what this machine's GEMM can do a
step turns into model FLOPs.
"""

from __future__ import annotations

import time

import torch

# large enough that a product is compute-bound on the device (2 * n^3 FLOPs)
SIZES = {"cpu": 2048, "cuda": 8192}


def gemm_tflops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 3) -> float:
    """TFLOP/s of an n x n product in dtype on device: the best of `repeats` after one untimed."""
    n = size or SIZES.get(device.type, 2048)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first allocates and picks the kernel
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12
