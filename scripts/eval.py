"""Evaluate a checkpoint: accuracy at its training resolution, at other resolutions with no
fine-tuning, and with the patches of each image shuffled. Prints JSON.

    python scripts/eval.py checkpoint=outputs/runs/<run>/checkpoints/last.pt
    python scripts/eval.py checkpoint=... resolutions=[24,48,64] output=eval.json
    python scripts/eval.py checkpoint=... precision=fp32       # default: the precision it trained in
    python scripts/eval.py checkpoint=... tta=none             # default: the run's own test-time augmentation
"""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vit.checks import check_tta
from vit.cli import ConfigError, fail


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.tta != "trained":
        try:
            check_tta(cfg.tta, "tta")
        except ConfigError as e:
            fail(str(e))
    import torch  # after Hydra has composed: a bad override is answered at once

    from vit.studies.evaluation import evaluate_checkpoint
    from vit.training.checkpoint import CheckpointError
    from vit.training.data import DataError

    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    device = "cpu" if device == "auto" else device
    try:
        result = evaluate_checkpoint(
            cfg.checkpoint,
            list(cfg.resolutions) if cfg.resolutions else None,
            device,
            {"root": cfg.data_root} if cfg.data_root else None,
            cfg.precision,
            cfg.tta,
        )
    except (CheckpointError, DataError, ValueError) as e:
        fail(str(e), code=1)
    text = json.dumps(result, indent=2)
    if cfg.output:
        Path(cfg.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
