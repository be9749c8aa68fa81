"""What a run leaves behind: TensorBoard events, metrics.jsonl, summary.json.

Only rank 0 writes. On resume, metrics.jsonl keeps the epochs the checkpoint has seen and
TensorBoard purges events at or after its step, so every epoch is logged exactly once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None, epochs_done: int):
        self.run_dir, self.enabled = run_dir, enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.writer = SummaryWriter(str(run_dir), purge_step=resume_step)
        kept = [r for r in self.history() if r["epoch"] <= epochs_done] if resume_step is not None else []
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def history(self) -> list[dict]:
        """The epochs logged so far. A line a kill cut short (no newline yet) is not one."""
        if not self.metrics_path.exists():
            return []
        whole = self.metrics_path.read_text().split("\n")[:-1]
        return [json.loads(line) for line in whole if line.strip()]

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.enabled:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def figure(self, tag: str, fig, step: int) -> None:
        if self.enabled:
            self.writer.add_figure(tag, fig, step)

    def epoch(self, record: dict) -> None:
        if self.enabled:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def finish(self, summary: dict, cfg: DictConfig, step: int) -> None:
        if not self.enabled:
            return
        write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        metrics = {
            "hparams/best_val_acc1": summary["best_val_acc1"],
            "hparams/final_val_acc1": summary["final_val_acc1"],
        }
        for s in hparams(flat_config(cfg), metrics):
            self.writer.file_writer.add_summary(s)
        self.scalars(metrics, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_atomic(path: Path, text: str) -> None:
    """A file that a kill leaves either as it was or whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def flat_config(cfg: DictConfig) -> dict[str, float | int | str | bool]:
    """{'model.depth': 9, 'model.pos_embed._target_': '...', ...}: scalars for the HParams tab."""
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            value = node if isinstance(node, (int, float, str, bool)) else str(node)
            flat[prefix[:-1]] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat
