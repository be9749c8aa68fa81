"""Run under torchrun by test_train.py: train with the EMA on, and at every checkpoint save
each process's own EMA to EMA_DIR, so that the test can compare them with rank 0's.

    torchrun --nproc_per_node=2 tests/ema_on_every_rank.py RUN_DIR EMA_DIR OVERRIDES...
"""

import sys
from pathlib import Path

import torch

from vit.cli import compose
from vit.training import distributed, trainer


def main(run_dir: str, ema_dir: str, *overrides: str) -> None:
    distributed.launch()
    cfg = compose("train", overrides)
    checkpoint_state = trainer.checkpoint_state

    def saving_each_ema(run, progress):
        path = Path(ema_dir) / f"ema-step{progress.step}-rank{run.procs.rank}.pt"
        torch.save(run.ema.state_dict(), path)
        return checkpoint_state(run, progress)

    trainer.checkpoint_state = saving_each_ema
    trainer.train(cfg, run_dir)
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
