"""The CUDA paths: skipped without a GPU (as in CI), run by `make test` on a machine with one.

Device-side augmentation on CUDA is covered by the `cuda` cases of tests/test_data.py.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from benchmark_report import expected_variants

from conftest import CUDA, tiny_vit
from data_files import make_cifar10_archive
from vit.studies.benchmark import peak_tflops
from vit.studies.evaluation import evaluate_checkpoint
from vit.training.checkpoint import load_checkpoint
from vit.training.wait_clock import WaitClock

pytestmark = CUDA
ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "trainer.log_every=5"]


def run(script, *args, cwd, env=None):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_cifar_run_on_the_gpu_compiled_in_bf16_and_evaluated_on_the_cpu(tmp_path):
    data_root, out = tmp_path / "data", tmp_path / "run"
    make_cifar10_archive(data_root)
    run(
        "train.py",
        f"hydra.run.dir={out}",
        f"data.root={data_root}",
        "data.download=false",
        "data.verify_checksums=false",
        "data.batch_size=16",
        "data.policy=trivialaugment",
        "data.mixup=0.2",
        "data.cutmix=0.5",
        "trainer.epochs=2",
        "trainer.compile=true",
        "trainer.ema=true",
        "optim=muon",  # as experiment=cifar10_fast: Muon's batched products and six test views on the GPU
        "trainer.tta=flip_shift",
        *TINY,
        cwd=tmp_path,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["epochs"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["data_wait_frac"] < 1 for r in records)
    state = load_checkpoint(out / "checkpoints" / "last.pt")  # mapped to the CPU
    assert all(t.device.type == "cpu" for t in state["model"].values())
    result = evaluate_checkpoint(out / "checkpoints" / "last.pt", resolutions=[], device="cpu")
    assert result["acc1"] == pytest.approx(summary["final_val_acc1"], abs=100 * 3 / 16)  # fp32 vs bf16: a few images


def test_the_conv_tokenizer_compiles_into_the_one_graph_on_the_gpu():
    # on a CPU it runs outside the graph (tests/test_model.py); on CUDA inductor's max-pool is its own
    torch._dynamo.reset()
    model = tiny_vit("conv_tokenizer", "gap").cuda()
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 16, 16, device="cuda"))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_wait_clock_reads_the_gpu_timeline():
    device = torch.device("cuda")
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)

    def slow_batches():
        for i in range(3):
            time.sleep(0.05)  # the host prepares a batch
            yield i

    idle = WaitClock(slow_batches(), device)  # the GPU has nothing else to do: it waits for every batch
    for _ in idle:
        pass
    torch.cuda.synchronize()
    assert 0.12 <= idle.seconds < 0.3

    def step():  # long enough on any recent GPU to cover the host's 50 ms
        nonlocal a
        for _ in range(800):
            a = (a @ a).clamp_(-1, 1)

    step()
    busy = WaitClock(slow_batches(), device)  # the GPU works through a step while the host prepares
    for _ in busy:
        step()
    torch.cuda.synchronize()
    assert busy.seconds < 0.03


def test_benchmark_on_the_gpu(tmp_path):
    run(
        "benchmark.py",
        "model.depth=1",
        "model.embed_dim=64",
        "model.num_heads=4",
        "benchmark.batch_size=64",
        "benchmark.steps=2",
        "benchmark.rounds=1",
        "benchmark.warmup=2",
        "benchmark.compare=false",
        f"benchmark.out_dir={tmp_path}",
        cwd=tmp_path,
    )
    report = json.loads(next(tmp_path.glob("benchmark_*.json")).read_text())
    assert report["setting"]["precision"] == "bf16"
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == expected_variants([False, True], "bf16")
    peaks = {p: peak_tflops(torch.cuda.get_device_name(), p) for p in ("bf16", "fp32")}
    for row in rows.values():
        assert row["train_images_per_sec"] > 0 and row["peak_memory_mb"] > 0
        assert (row["mfu"] is not None) == (peaks[row["precision"]] is not None)
        assert row["mfu"] is None or 0 < row["mfu"] < 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_nccl_processes(tmp_path):
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        torchrun
        + [
            str(ROOT / "scripts" / "train.py"),
            f"hydra.run.dir={out}",
            "experiment=probe",
            "trainer.epochs=1",
            "data.num_train=512",
            "data.num_val=256",
            *TINY,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["device"].startswith("cuda")
