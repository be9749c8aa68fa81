"""What a run leaves behind: TensorBoard events, metrics.jsonl, summary.json.

Only rank 0 writes. On resume, metrics.jsonl keeps the epochs the checkpoint has seen and
TensorBoard purges events at or after its step, so every epoch is logged exactly once.
"""

from __future__ import annotations

import json
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
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def history(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

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
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
