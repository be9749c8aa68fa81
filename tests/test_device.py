"""trainer.device: a GPU the driver shows but torch cannot use is an error, and cuda:N is
the GPU that runs the kernels."""

import os
import subprocess

import pytest
import torch

from vit.errors import TrainingError
from vit.training import device as device_module
from vit.training.device import choose_device

SMI = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:18:00.0 Off |                    0 |
"""


@pytest.fixture
def old_driver(monkeypatch):
    """A machine whose nvidia-smi lists an H100 on a CUDA 12.4 driver, with a cu130 torch."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(device_module.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(
        device_module.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=SMI, stderr="")
    )
    return monkeypatch


def test_a_gpu_torch_cannot_use_is_one_line_naming_the_wheel(old_driver):
    for name in ("auto", "cuda"):
        with pytest.raises(TrainingError) as raised:
            choose_device(name)
        message = str(raised.value)
        assert len(message.splitlines()) == 1
        assert "driver for CUDA 12.4" in message and "built for CUDA 13.0" in message
        assert "--index-url https://download.pytorch.org/whl/cu124" in message
    assert choose_device("cpu") == torch.device("cpu")


def test_hidden_gpus_or_none_at_all_mean_the_cpu(old_driver):
    old_driver.setenv("CUDA_VISIBLE_DEVICES", "")  # hidden on purpose, as the CPU-behaviour tests do
    assert choose_device("auto") == torch.device("cpu")
    old_driver.delenv("CUDA_VISIBLE_DEVICES")
    old_driver.setattr(device_module.shutil, "which", lambda name: None)  # no driver: a CPU machine
    assert choose_device("auto") == torch.device("cpu")
    with pytest.raises(TrainingError, match="trainer.device=cuda but no CUDA device is available"):
        choose_device("cuda")


def test_the_chosen_gpu_becomes_the_current_one(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert choose_device("cuda:1") == torch.device("cuda", 1)
    assert choose_device("cuda") == torch.device("cuda", 0)
    assert current == [torch.device("cuda", 1), torch.device("cuda", 0)]


def test_a_cpu_test_cannot_lose_its_cpu_pin(monkeypatch):
    # conftest pins every test not marked cuda to the CPU; undoing the test's own patches
    # (as a test of a full disk does, to let the run go on) must not lift that pin
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.undo()
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""  # the scripts this test starts see no GPU
    assert not torch.cuda.is_available() and choose_device("auto") == torch.device("cpu")
