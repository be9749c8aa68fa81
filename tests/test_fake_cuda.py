"""The CUDA path without a GPU: the trainer's own training step and evaluation for the
presets (digits, probe, cifar10_fast without compile, class folders), and every patch
embedding x pooling x scheme model, on tensors that claim to live on `cuda` (torch's
FakeTensorMode), so that every push checks what only a GPU would otherwise show.

What it catches: a CPU tensor mixed with a CUDA one (the fake tensors check devices as a GPU
does), and a host sync (`.item()`, `.tolist()`, `bool(tensor)`: a fake tensor has no value to
give, so it raises) anywhere in a training step, and anywhere in an evaluation before its one
designed sync at the end. The backward pass is walked in Python (tests/python_backward.py):
torch's C++ engine wants a real CUDA context.

What it does not cover: kernels and numerics (nothing is computed); torch.compile (not traced
here); class folders with data.cache=true (on a GPU its crops are made ahead in a thread, in
pinned memory: real CUDA calls outside the fake mode); the DataLoader's worker processes (run
with none), pinned memory and non-blocking copies; NCCL; the device of the augmentation's
random generator (a CPU one stands in: a CUDA one needs a GPU); and the syncs of the logging
and checkpointing around the step. What a loading process does on the host (initialisers,
reading and splitting a dataset, decoding and transforming images) runs for real, on the CPU,
as on a GPU machine. `make gpu-check` on a real GPU covers the rest.
"""

import importlib
import itertools
import pkgutil
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from python_backward import python_backward
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    FakeTensor,
    FakeTensorMode,
    unset_fake_temporarily,
)

from conftest import PATCH_EMBEDS, POOLS, SCHEMES, tiny_vit
from data_files import make_cifar10_archive, make_class_folders
from runs import TINY
from vit.cli import compose
from vit.training import data as data_package
from vit.training import precision, trainer
from vit.training.data import augment, cached_batches, imagefolder, in_memory
from vit.training.data.in_memory import InMemoryData
from vit.training.optim import build_optimizer
from vit.training.resume import Start

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.fixture
def fake_cuda(monkeypatch):
    """A FakeTensorMode in which `cuda` tensors can be made, autocast to bf16 is allowed on
    them, and `Tensor.backward` is walked in Python."""
    import torch.cuda.amp.common

    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *args, **kwargs: python_backward(self))
    monkeypatch.setattr(trainer, "choose_device", lambda name: CUDA)
    # a copy of a module (the EMA's) by clone: torch's default deepcopy would read a fake
    # tensor's storage, which it has none of (memory corruption, and a crash later)
    monkeypatch.setattr(FakeTensor, "__deepcopy__", fake_deepcopy)
    monkeypatch.setattr(trainer, "build_model", on_the_cpu(trainer.build_model))  # initialisers read values
    for kind in in_memory_datasets():  # reading and splitting a dataset: CPU work, as always
        monkeypatch.setattr(kind, "splits", on_the_cpu(kind.splits))
    # the data config's object, and class folders' loaders (which hold no device tensors), are
    # made for real: their transforms' tensors are the CPU ones a loading process uses
    monkeypatch.setattr(trainer, "instantiate_group", on_the_cpu(trainer.instantiate_group))
    monkeypatch.setattr(imagefolder.ImageFolderData, "loaders", on_the_cpu(imagefolder.ImageFolderData.loaders))
    real_device_loader = imagefolder.DeviceLoader.__init__
    monkeypatch.setattr(  # a DataLoader's loading runs in its worker processes, outside the fake mode
        imagefolder.DeviceLoader,
        "__init__",
        lambda self, loader, device: real_device_loader(self, LoadingOnTheHost(loader), device),
    )
    for module in (in_memory, cached_batches):  # a real CUDA generator needs a GPU: a CPU one stands in
        monkeypatch.setattr(module, "batch_generator", lambda device, *key: augment.batch_generator(CPU, *key))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


def fake_deepcopy(tensor: FakeTensor, memo: dict) -> FakeTensor:
    if id(tensor) not in memo:
        with torch.no_grad():
            memo[id(tensor)] = tensor.clone().requires_grad_(tensor.requires_grad)
    return memo[id(tensor)]


def on_the_cpu(function):
    """`function` run for real (on the CPU), outside the fake mode."""

    def real(*args, **kwargs):
        with unset_fake_temporarily():
            return function(*args, **kwargs)

    return real


class LoadingOnTheHost:
    """A DataLoader whose batches are loaded for real, as its worker processes would."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        with unset_fake_temporarily():
            batches = iter(self.loader)
        while True:
            with unset_fake_temporarily():
                batch = next(batches, None)
            if batch is None:
                return
            yield batch


def in_memory_datasets() -> list[type]:
    """Every in-memory dataset's class with its own `splits` (every data module imported first)."""
    for module in pkgutil.iter_modules(data_package.__path__):
        importlib.import_module(f"{data_package.__name__}.{module.name}")
    kinds, found = [InMemoryData], []
    while kinds:
        kind = kinds.pop()
        found.append(kind)
        kinds += kind.__subclasses__()
    return [kind for kind in found if "splits" in vars(kind)]


def first_sync(call) -> tuple[str, int] | None:
    """The function and line of our code where `call()` first read a value to the host; None if it never did."""
    try:
        call()
    except DataDependentOutputException as e:
        ours = [f for f in traceback.extract_tb(e.__traceback__) if "/vit/" in f.filename]
        return ours[-1].name, ours[-1].lineno
    return None


def designed_evaluation_sync() -> tuple[str, int]:
    """evaluate's one read of its totals, after the last batch."""
    lines, start = Path(trainer.__file__).read_text().splitlines(), trainer.evaluate.__code__.co_firstlineno
    line = next(i for i in range(start, len(lines)) if ".tolist()" in lines[i - 1])
    return "evaluate", line


def step_and_evaluate(overrides: list[str], tmp_path: Path) -> None:
    cfg = trainer.with_class_count(compose("train", [*overrides, *TINY, "trainer.device=cuda"]))
    run = trainer.build(cfg, tmp_path / "run", trainer.StopRequest())
    run.stop.restore()
    trainer.restore(run, Start())
    assert run.device == CUDA and all(p.device == CUDA for p in run.model.parameters())
    for step, (x, targets) in zip(range(2), trainer.prepared_batches(run, 0, 0), strict=False):
        assert x.device == targets.device == CUDA
        loss = trainer.train_step(run, x, targets, step)  # no host sync may happen in here
        assert loss.device == CUDA
    assert all(p.grad is None or p.grad.device == CUDA for p in run.model.parameters())
    tta = cfg.trainer.tta
    evaluation = lambda: trainer.evaluate(run.model, run.val_batches, run.mean, run.std, run.autocast, tta)  # noqa: E731
    assert first_sync(evaluation) == designed_evaluation_sync()


def test_the_presets_train_and_evaluate_on_cuda_tensors(fake_cuda, tmp_path):
    cifar = make_cifar10_archive(tmp_path / "cifar")
    presets = {
        "digits": ["experiment=digits", "data.batch_size=32", "optim=muon", "trainer.ema=true"],
        "probe": ["experiment=probe", "data.num_train=128", "data.num_val=64", "data.batch_size=32"],
        "cifar10_fast": [
            "experiment=cifar10_fast",
            f"data.root={cifar.parent}",
            "data.download=false",
            "data.verify_checksums=false",
            "data.batch_size=16",
            "trainer.compile=false",
            "trainer.tta=flip_shift",
        ],
        "class folders": [
            "data=imagefolder",
            f"data.root={make_class_folders(tmp_path / 'tree', per_class=(8, 4), size=20)}",
            "data.img_size=16",
            "data.batch_size=8",
            "data.num_workers=0",
        ],
    }
    for name, overrides in presets.items():
        step_and_evaluate(overrides, tmp_path / name)


@pytest.mark.parametrize("patch_embed", list(PATCH_EMBEDS))
def test_every_model_steps_on_cuda_tensors(fake_cuda, patch_embed):
    with unset_fake_temporarily():
        models = {
            (pool, scheme): tiny_vit(patch_embed, pool, scheme) for pool, scheme in itertools.product(POOLS, SCHEMES)
        }
    for (pool, scheme), model in models.items():
        model = model.to(CUDA)
        optimizer = build_optimizer(model, 1e-3, 0.05, (0.9, 0.999), True, "muon")
        x, y = torch.randn(4, 3, 16, 16, device=CUDA), torch.randint(0, 7, (4,), device=CUDA)
        with precision.autocast(CUDA, torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        assert all(p.grad is not None and p.grad.device == CUDA for p in model.parameters()), (pool, scheme)


def test_the_trace_fails_on_a_cpu_tensor_and_on_a_host_sync(fake_cuda, monkeypatch, tmp_path):
    cuda_step = trainer.train_step

    def step_with_a_mean_on_the_cpu(run, x, targets, step):
        return cuda_step(run, x - x.mean(dim=0).cpu(), targets, step)  # a per-pixel mean: not a scalar

    def step_that_reads_the_loss(run, x, targets, step):
        loss = cuda_step(run, x, targets, step)
        loss.item()
        return loss

    probe = ["experiment=probe", "data.num_train=64", "data.num_val=32", "data.batch_size=32"]
    monkeypatch.setattr(trainer, "train_step", step_with_a_mean_on_the_cpu)
    with pytest.raises(RuntimeError, match="same device"):
        step_and_evaluate(probe, tmp_path / "mixed")
    monkeypatch.setattr(trainer, "train_step", step_that_reads_the_loss)
    with pytest.raises(DataDependentOutputException):
        step_and_evaluate(probe, tmp_path / "synced")
