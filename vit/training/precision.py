"""The numeric precision of a run, and the autocast (with its attention kernel) that gives it.

`auto` picks what is fastest at equal accuracy on the device at hand:
- CUDA: bf16 autocast.
- A CPU with native bf16 units (AMX or AVX-512 BF16): bf16 autocast, with torch's math
  attention kernel. Its fused CPU kernel is slow in bf16's backward pass: on a 2-core AMX
  machine, vit_cifar's training step ran at 32 img/s with it, 88 with the math kernel and 71
  in fp32.
- Any other CPU: fp32. Without those units bf16 is emulated: the same step ran 18x slower
  than fp32 on a 2-core AMD EPYC with AVX2 only (5.6 against 101 img/s).

Kernels held below the bf16 units (`ONEDNN_MAX_CPU_ISA=AVX2` or `ATEN_CPU_CAPABILITY=avx2`,
the AVX2 stand-in's variables) hide them: the CPU still lists the units, but its kernels no
longer use them, so `auto` is fp32 there as on an AVX2-only CPU.

`ns_dtype` is the dtype of Muon's Newton-Schulz iterations: bf16 (as its authors run them)
under a reduced-precision autocast, fp32 otherwise, so that a run in fp32 computes nothing
in an emulated bf16 (on Zen 3 a batched 8x64x64 product took 15x longer in bf16).
"""

from __future__ import annotations

import os
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


# oneDNN's ISA limits that stop below its bf16 kernels, and ATen's below AVX-512
ONEDNN_BELOW_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
ATEN_BELOW_AVX512 = {"default", "avx2"}


def kernels_held_below_bf16(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment holds oneDNN's or ATen's CPU kernels below the bf16 units."""
    environ = os.environ if environ is None else environ
    onednn = environ.get("ONEDNN_MAX_CPU_ISA", environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    aten = environ.get("ATEN_CPU_CAPABILITY", "").lower()
    return onednn in ONEDNN_BELOW_BF16 or aten in ATEN_BELOW_AVX512


def cpu_has_native_bf16(flags: set[str] | None = None, environ: dict[str, str] | None = None) -> bool:
    """Whether this CPU computes bf16 in its own units, and its kernels may use them."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS) and not kernels_held_below_bf16(environ)


def choose_precision(
    name: str, device: torch.device, flags: set[str] | None = None, environ: dict[str, str] | None = None
) -> torch.dtype | None:
    """The autocast dtype for trainer.precision=name on device (None: fp32, no autocast)."""
    check_precision(name)
    if name == "auto":
        fast_bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16(flags, environ))
        name = "bf16" if fast_bf16 else "fp32"
    return DTYPES[name]


def ns_dtype(amp_dtype: torch.dtype | None) -> torch.dtype:
    """Muon's Newton-Schulz dtype for a run under this autocast: bf16, or fp32 in an fp32 run."""
    return torch.float32 if amp_dtype is None else torch.bfloat16


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
