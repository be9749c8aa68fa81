"""Training runs for the tests: in-process, composed as scripts/train.py composes them; and the
scripts as subprocesses, for what is about the command line (exit codes, one-line errors,
signals, torchrun)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import open_dict

from vit.cli import compose

ROOT = Path(__file__).resolve().parents[1]
# a 1-block, width-32 model: what these tests check does not need more
TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.drop_path_rate=0", "trainer.log_every=5"]


def train(run_dir: Path, *overrides: str) -> dict:
    """`python scripts/train.py hydra.run.dir=RUN_DIR OVERRIDES`, in this process. A test of
    CPU behaviour (conftest hides the GPU from its scripts) trains here on the CPU too, unless
    it names a device."""
    from vit.training.trainer import train as train_run

    if os.environ.get("CUDA_VISIBLE_DEVICES") == "" and not any(o.startswith("trainer.device=") for o in overrides):
        overrides = ("trainer.device=cpu", *overrides)
    cfg = compose("train", overrides, hydra_node=True)
    choices, task = dict(cfg.hydra.runtime.choices), list(cfg.hydra.overrides.task)
    with open_dict(cfg):
        del cfg["hydra"]  # as a Hydra app's task function receives it
    return train_run(cfg, run_dir, choices, task)


def script(
    name: str, *args: str, cwd: Path, env: dict | None = None, prefix: tuple = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *prefix, str(ROOT / "scripts" / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def train_command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), f"hydra.run.dir={run_dir}", *overrides]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_error_line(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]
