"""Train a ViT: `python scripts/train.py [Hydra overrides]`. See the README for the options.

    python scripts/train.py experiment=digits                 # offline, about a minute on a CPU
    python scripts/train.py model/pos_embed=rope_2d            # CIFAR-10 with the default preset
    python scripts/train.py -m model/pos_embed=none,learned_1d,sincos_2d,relative_bias,rope_2d
    torchrun --nproc_per_node=4 scripts/train.py data=imagefolder data.root=/data/imagenet100
"""

import sys

import hydra
from omegaconf import DictConfig

from vit import distributed
from vit.checkpoint import CheckpointError
from vit.data import DataError
from vit.cli import run_reporting_errors
from vit.trainer import TrainingError, train


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    result = run_reporting_errors(lambda: train(cfg), (TrainingError, CheckpointError, DataError, OSError))
    if "stopped" in result:  # preempted: last.pt is saved; exit non-zero so a scheduler requeues
        sys.exit(128 + int(result["stopped"]))
    return result["best_val_acc1"]  # for Hydra sweepers that optimise


if __name__ == "__main__":
    distributed.launch()
    main()
    distributed.shutdown()
