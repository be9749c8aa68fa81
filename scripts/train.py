"""Train a ViT: `python scripts/train.py [Hydra overrides]`. See docs/training.md for the options.

    python scripts/train.py experiment=digits                 # offline, about a minute on a CPU
    python scripts/train.py model/pos_embed=rope_2d            # CIFAR-10 with the default preset
    python scripts/train.py -m model/pos_embed=none,learned_1d,sincos_2d,relative_bias,rope_2d
    torchrun --nproc_per_node=4 scripts/train.py data=imagefolder data.root=/data/imagenet100

Hydra composes and the config is checked before torch is imported, so a bad override or
value is answered at once.
"""

import contextlib
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from vit.cli import ConfigError, check_config, fail, sleep_while_waiting
from vit.training import distributed


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        check_config(cfg)
    except ConfigError as e:
        if multirun:
            raise
        fail(str(e))
    sleep_while_waiting(cfg)

    from vit.errors import TrainingError
    from vit.folder_lock import FolderInUse
    from vit.training.checkpoint import CheckpointError
    from vit.training.data import DataError
    from vit.training.trainer import train

    exit_codes = {ConfigError: 2, TrainingError: 1, CheckpointError: 1, DataError: 1, OSError: 1}
    try:
        result = train(cfg, run_dir, hydra_cfg.runtime.choices, hydra_cfg.overrides.task)
    except BaseException as e:
        theirs = isinstance(e, FolderInUse)  # the folder is another process's: write nothing there
        if not isinstance(e, (KeyboardInterrupt, SystemExit)) and distributed.current().is_main and not theirs:
            # the sweep (and the ablation report) can tell a failed run from a missing one
            with contextlib.suppress(OSError):
                (run_dir / "error.txt").write_text("".join(traceback.format_exception(e)))
        if isinstance(e, tuple(exit_codes)):
            if multirun:
                raise  # Hydra records the failed job and goes on with the others
            fail(str(e), code=next(c for kind, c in exit_codes.items() if isinstance(e, kind)))
        raise
    if "stopped" in result:  # preempted: last.pt is saved; exit non-zero so a scheduler requeues
        sys.exit(128 + int(result["stopped"]))
    if distributed.current().is_main:  # finished: an earlier session's failure is history
        (run_dir / "error.txt").unlink(missing_ok=True)
    return result["best_val_acc1"]  # for Hydra sweepers that optimise


if __name__ == "__main__":
    distributed.launch()
    main()
    distributed.shutdown()
