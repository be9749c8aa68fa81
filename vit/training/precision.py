"""The numeric precision of a run, and the autocast (with its attention kernel) that gives it.

`auto` picks what is fastest at equal accuracy on the device at hand:
- CUDA: bf16 autocast.
- A CPU with native bf16 units (AMX or AVX-512 BF16): bf16 autocast, with torch's math
  attention kernel. Its fused CPU kernel is slow in bf16's backward pass: on a 2-core AMX
  machine, vit_cifar's training step ran at 32 img/s with it, 88 with the math kernel and 71
  in fp32.
- Any other CPU: fp32. Without those units bf16 is emulated: the same step ran 18x slower
  than fp32 on a 2-core AMD EPYC with AVX2 only (5.6 against 101 img/s).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from vit.checks import check_precision

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo's names for the units


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux lists them; empty where there is no /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def choose_precision(name: str, device: torch.device, flags: set[str] | None = None) -> torch.dtype | None:
    """The autocast dtype for trainer.precision=name on device (None: fp32, no autocast)."""
    check_precision(name)
    if name == "auto":
        fast_bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16(flags))
        name = "bf16" if fast_bf16 else "fp32"
    return DTYPES[name]


def allow_tf32() -> None:
    """fp32 matrix products and convolutions on CUDA tensor cores in TF32 (10-bit mantissa),
    as timm's train.py does: what `trainer.precision=fp32` means on a GPU. No effect on a CPU."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def precision_name(dtype: torch.dtype | None) -> str:
    return {dtype_: name for name, dtype_ in DTYPES.items()}[dtype]


def attention_kernels(device: torch.device, dtype: torch.dtype | None) -> list[SDPBackend] | None:
    """The attention kernels to allow under this autocast; None leaves torch's choice."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        return [SDPBackend.MATH]
    return None


@contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to dtype (nothing for fp32), with the attention kernels chosen for it."""
    kernels = attention_kernels(device, dtype)
    with (
        torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext(),
        sdpa_kernel(kernels) if kernels is not None else nullcontext(),
    ):
        yield
