"""torchrun's elastic restart: a rank killed with SIGKILL mid-epoch, the group restarted by
torchrun, the run resumed from its last checkpoint to the weights of an uncut run, bit for bit;
and SIGTERM to the launcher: the group saves and stops, and resume=auto finishes the run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from runs import TINY, metrics, train_command
from vit.training.checkpoint import load_checkpoint

ARGS = [
    "experiment=probe",
    "trainer.epochs=3",
    "data.num_train=6144",  # 192 steps an epoch: a second or two, long enough to be cut
    "data.num_val=128",
    "data.batch_size=32",
    "trainer.precision=fp32",
    *TINY,
    "resume=auto",  # what an elastic restart needs: each start goes on from the last checkpoint
]


def torchrun(run_dir: Path, *flags: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *flags]
    return launcher + train_command(run_dir, *ARGS)[1:]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def worker(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the launcher's worker of that rank, once it runs."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
    for pid in children.read_text().split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def wait_for_epoch(launcher: subprocess.Popen, run_dir: Path, epoch: int) -> None:
    deadline = time.time() + 300
    while not ((run_dir / "metrics.jsonl").exists() and len(metrics(run_dir)) >= epoch):
        assert launcher.poll() is None and time.time() < deadline, "the run ended before it could be cut"
        time.sleep(0.05)


def same_weights(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert x["step"] == y["step"]
    for name, tensor in x["model"].items():
        assert torch.equal(tensor, y["model"][name]), name


def uncut(folder: Path) -> Path:
    """The run as two processes train it without a cut: what the cut run must end as."""
    proc = subprocess.run(torchrun(folder / "run"), cwd=folder, capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "run"


def test_a_killed_rank_is_restarted_and_a_stopped_launcher_resumes_to_bit_identical_weights(tmp_path):
    (tmp_path / "uncut").mkdir()
    done, cut = uncut(tmp_path / "uncut"), tmp_path / "cut"
    launcher = subprocess.Popen(
        torchrun(cut, "--max-restarts=3"), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env()
    )
    # kill -9 of one rank while epoch 2 trains: torchrun restarts the group from epoch 1's checkpoint
    wait_for_epoch(launcher, cut, 1)
    os.kill(worker(launcher, 1), signal.SIGKILL)
    wait_for_epoch(launcher, cut, 2)
    assert (cut / "train.log").read_text().count(" parameters, ") == 2  # a second session: restarted
    # SIGTERM to the launcher while epoch 3 trains: the group agrees on a step, saves, and stops
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=600)
    assert launcher.returncode != 0, err.decode()[-3000:]  # stopped, not finished: a scheduler requeues it
    assert 2 * 192 <= load_checkpoint(cut / "checkpoints" / "last.pt")["step"] < 3 * 192
    proc = subprocess.run(torchrun(cut), cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_weights(done, cut)
    assert [r["epoch"] for r in metrics(cut)] == [1, 2, 3]  # each epoch logged once
    assert [r["val_acc1"] for r in metrics(cut)] == [r["val_acc1"] for r in metrics(done)]
    assert not (cut / "error.txt").exists()  # the finished run does not keep the crash's note
