"""The device a run trains on: `trainer.device` (auto, cpu, cuda, cuda:N), checked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import torch

from vit.errors import TrainingError
from vit.training import distributed


def choose_device(name: str) -> torch.device:
    """auto: the GPU when torch can use one, else the CPU. A GPU that the driver shows but
    torch cannot use is an error, not a silent CPU run. A CUDA device becomes the current one,
    so that kernels, timings and synchronisation go to it (cuda:1 is not GPU 0)."""
    if name in ("auto", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            reason = unusable_gpu()
            if reason:
                raise TrainingError(reason)
            if name != "auto":
                raise TrainingError(f"trainer.device={name} but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and distributed.current().world > 1:
        device = torch.device("cuda", distributed.current().local_rank)
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def unusable_gpu() -> str | None:
    """Why torch cannot use the GPU that nvidia-smi lists (a driver older than the CUDA the
    torch wheel was built for, or a CPU-only wheel); None when nvidia-smi lists none, or when
    CUDA_VISIBLE_DEVICES hides them all on purpose."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return None
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        listed = subprocess.run([smi], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    driver = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", listed.stdout)
    if listed.returncode != 0 or not driver:
        return None
    major, minor = driver.groups()
    import torchvision

    pins = f"torch=={torch.__version__.split('+')[0]} torchvision=={torchvision.__version__.split('+')[0]}"
    built = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    return (
        f"nvidia-smi lists a GPU with a driver for CUDA {major}.{minor}, but torch {torch.__version__} is {built} "
        f"and cannot use it: update the driver, or install a build for CUDA {major}.{minor} or older (pip install "
        f"{pins} --index-url https://download.pytorch.org/whl/cu{major}{minor}), or pass trainer.device=cpu"
    )
