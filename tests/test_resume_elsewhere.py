"""A run resumed somewhere else than it was saved: in another precision, on another device,
with fewer GPUs visible. What matches is restored; what cannot be is said in one line."""

import logging

import pytest
import torch

from conftest import CUDA
from runs import TINY, train
from vit.training.checkpoint import load_checkpoint, rng_state, set_rng_state
from vit.training.optim import build_optimizer, load_optimizer_state

PROBE = ["experiment=probe", "data.num_train=256", "data.num_val=128", "trainer.epochs=2", *TINY]


def test_a_resume_in_another_precision_says_so_and_fp16_starts_its_scale_afresh(tmp_path, caplog):
    train(tmp_path / "fp32", *PROBE, "trainer.precision=fp32")
    after_epoch_1 = tmp_path / "fp32" / "checkpoints" / "previous.pt"
    assert load_checkpoint(after_epoch_1)["precision"] == "fp32"
    with caplog.at_level(logging.WARNING, logger="vit"):
        fp16 = train(tmp_path / "fp16", *PROBE, "trainer.precision=fp16", f"resume={after_epoch_1}")
    assert "the checkpoint trained in fp32, this session runs fp16: the loss scale starts afresh" in caplog.text
    saved = load_checkpoint(tmp_path / "fp16" / "checkpoints" / "last.pt")
    assert fp16["precision"] == "fp16" and saved["precision"] == "fp16" and saved["scaler"]["scale"] > 0

    train(tmp_path / "fp16_fresh", *PROBE, "trainer.precision=fp16")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vit"):  # and back: fp16's scale is left aside
        train(tmp_path / "back", *PROBE, f"resume={tmp_path / 'fp16_fresh' / 'checkpoints' / 'previous.pt'}")
    assert "the checkpoint trained in fp16, this session runs " in caplog.text


def test_a_checkpoint_from_another_device_keeps_this_devices_fused_adamw():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.no_weight_decay = lambda: set()
    elsewhere = build_optimizer(model, 1e-2, 0.05, (0.9, 0.999), fused=False)  # as saved without fused AdamW
    model(torch.randn(2, 4)).sum().backward()
    elsewhere.step()
    here = build_optimizer(model, 1e-2, 0.05, (0.9, 0.999), fused=True)
    load_optimizer_state(here, elsewhere.state_dict())
    assert [g["fused"] for g in here.param_groups] == [True, True]
    reference = build_optimizer(model, 1e-2, 0.05, (0.9, 0.999), fused=False)
    reference.load_state_dict(elsewhere.state_dict())
    before = [p.detach().clone() for p in model.parameters()]
    here.step()
    fused_after = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, b in zip(model.parameters(), before, strict=True):
            p.copy_(b)
    reference.step()  # the same update, by the unfused kernel: the state carried over whole
    for p, f in zip(model.parameters(), fused_after, strict=True):
        torch.testing.assert_close(p, f)


def test_a_gpus_random_stream_is_saved_alone_and_restored_with_fewer_gpus(monkeypatch):
    streams = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(8)}
    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: streams[device.index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.update({device.index: state}))

    saved = rng_state(torch.device("cuda", 3))
    assert torch.equal(saved["cuda"], streams[3])  # this process's GPU only
    set_rng_state(saved, torch.device("cuda", 0))  # resumed where GPU 3 is now GPU 0
    assert torch.equal(restored.pop(0), streams[3])

    old = {**saved, "cuda": [streams[0], streams[1]]}  # the former format: every visible GPU's stream
    set_rng_state(old, torch.device("cuda", 1))
    assert torch.equal(restored.pop(1), streams[1])
    set_rng_state(old, torch.device("cuda", 5))  # more GPUs now than then: the seed's stream stays
    assert restored == {}
    set_rng_state(saved, torch.device("cpu"))
    assert restored == {}


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA)])
def test_a_gpus_random_stream_round_trips(device):
    state = rng_state(torch.device(device))
    first = torch.rand(4, device=device)
    set_rng_state({**state, "cuda": [state["cuda"]] * 8}, torch.device(device))  # as saved by 8 GPUs, before
    assert torch.equal(torch.rand(4, device=device), first)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA)])
def test_a_gpu_run_resumed_from_its_checkpoint_ends_where_the_uncut_run_does(tmp_path, device):
    # the GPU twin of the CPU's bit-identical resume test: GPU kernels may sum in another order
    # from run to run, so the weights are compared closely rather than bit for bit
    args = [*PROBE, f"trainer.device={device}", "trainer.precision=fp32", "model.dropout=0.1", "trainer.ema=true"]
    full = train(tmp_path / "full", *args)
    resumed = train(tmp_path / "cut", *args, f"resume={tmp_path / 'full' / 'checkpoints' / 'previous.pt'}")
    assert full["device"].startswith("cuda") and resumed["epochs"] == full["epochs"] == 2
    reference = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    again = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert again["step"] == reference["step"]
    for key, value in reference["model"].items():
        torch.testing.assert_close(again["model"][key], value, rtol=1e-3, atol=1e-4, msg=key)
