"""Where a run stands: what a checkpoint holds besides the weights, optimizer and random streams."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # batches of the next epoch already trained (a run stopped mid-epoch)
    step: int = 0  # optimizer steps, in all
    best_val_acc1: float = -1.0
    elapsed_s: float = 0.0  # wall time of the sessions before this one
    epoch_loss_sum: float = 0.0  # the unfinished epoch: its summed training loss so far,
    epoch_train_s: float = 0.0  # and its training time so far

    def finish_epoch(self, val_acc1: float | None) -> bool:
        """Count the epoch as done; True when it is the best so far (None: not evaluated)."""
        is_best = val_acc1 is not None and val_acc1 > self.best_val_acc1
        if is_best:
            self.best_val_acc1 = val_acc1
        self.epoch += 1
        self.batch_in_epoch, self.epoch_loss_sum, self.epoch_train_s = 0, 0.0, 0.0
        return is_best

    def to_checkpoint(self, session_s: float) -> dict:
        """The checkpoint's keys (`session_s`: this session's wall time so far)."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best_val_acc1": self.best_val_acc1,
            "elapsed_s": self.elapsed_s + session_s,
            "partial": {"loss_sum": self.epoch_loss_sum, "train_s": self.epoch_train_s},
        }

    @classmethod
    def from_checkpoint(cls, state: dict) -> Progress:
        return cls(
            epoch=state["epoch"],
            batch_in_epoch=state["batch_in_epoch"],
            step=state["step"],
            best_val_acc1=state["best_val_acc1"],
            elapsed_s=state["elapsed_s"],
            epoch_loss_sum=state["partial"]["loss_sum"],
            epoch_train_s=state["partial"]["train_s"],
        )
