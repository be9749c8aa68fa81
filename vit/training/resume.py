"""Where a run stands before it trains: new, to resume (and from which checkpoint), or finished.

`resume=auto` goes on from the newest checkpoint of the run folder that can be read: last.pt,
or, when it is damaged or missing, the newer of previous.pt and best.pt, saying which.
A resumed run must be the same run: the same model and data, and the same batch size,
epochs, optimizer settings, seed and number of processes, which fix its schedule and its
random streams. Anything else is refused in one line rather than silently changed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vit.errors import TrainingError
from vit.training.checkpoint import CHECKPOINTS, CheckpointError, load_checkpoint

log = logging.getLogger("vit")

# dotted config keys (a trailing dot: the whole group) that make the model and data what they are
ARCHITECTURE = ("model.", "data.name", "data.img_size", "data.in_chans", "data.num_classes", "data.classes")
TRAINING_ONLY = ("model.drop_path_rate", "model.dropout")  # may change between sessions of a run
# what fixes the schedule (steps per epoch, length, learning rates) and the random streams
SCHEDULE = ("data.batch_size", "trainer.epochs", "optim.", "seed")


@dataclass
class Start:
    checkpoint: dict | None = None  # the state to go on from; None: a new run
    source: Path | None = None  # the file it was read from
    finished: dict | None = None  # the summary of a run with nothing left to train


def where_run_stands(cfg: DictConfig, run_dir: Path, world: int) -> Start:
    folder = run_dir / "checkpoints"
    if not cfg.resume:
        if any((folder / name).exists() for name in CHECKPOINTS):  # never overwrite another run's work
            raise TrainingError(
                f"{run_dir} already holds a run (checkpoints/last.pt): add resume=auto to continue it, "
                f"or choose another hydra.run.dir"
            )
        return Start()
    if cfg.resume != "auto":
        state = load_checkpoint(cfg.resume)
        check_same_run(state, cfg, world)
        if state["epoch"] >= cfg.trainer.epochs:
            raise TrainingError(f"{cfg.resume} has finished all {cfg.trainer.epochs} epochs: nothing to train")
        return Start(checkpoint=state, source=Path(cfg.resume))
    found = newest_readable(folder)
    if found is None:
        log.info(f"resume=auto: no checkpoint in {folder}, starting fresh")
        return Start()
    path, state = found
    check_same_run(state, cfg, world)
    summary = run_dir / "summary.json"
    if state["epoch"] >= cfg.trainer.epochs and summary.exists():  # keep its summary as it is
        try:
            finished = json.loads(summary.read_text())
        except (ValueError, UnicodeDecodeError):
            log.warning(f"{summary} is damaged; writing it again from {path}")
        else:
            log.info(f"{run_dir} has finished all {cfg.trainer.epochs} epochs; nothing to train")
            return Start(finished=finished)
    return Start(checkpoint=state, source=path)


def newest_readable(folder: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in `folder` that can be read, and its path; None if there is none."""
    present = [folder / name for name in CHECKPOINTS if (folder / name).exists()]
    readable, problems = [], []
    for path in present:
        try:
            readable.append((path, load_checkpoint(path)))
        except CheckpointError as e:
            problems.append(str(e))
        if readable and readable[0][0].name == "last.pt":
            break  # an intact last.pt is the newest
    if present and not readable:
        raise CheckpointError(
            f"none of the checkpoints in {folder} can be read ({'; '.join(problems)}); move them away to start afresh"
        )
    if not readable:
        return None
    path, state = max(readable, key=lambda found: found[1]["step"])
    if path.name != "last.pt":
        damaged = "; ".join(problems) or "last.pt is missing"
        log.warning(f"resume=auto: {damaged}; going on from {path} (epoch {state['epoch']}, step {state['step']})")
    return path, state


def check_same_run(saved: dict, cfg: DictConfig, world: int) -> None:
    """Refuse, in one line, a checkpoint of another model or dataset, or one whose schedule
    or random streams this run would change."""
    old, new = flatten(saved["config"]), flatten(OmegaConf.to_container(cfg, resolve=True))
    old.setdefault("optim.name", "adamw")  # saved before optim=muon existed
    for key in sorted(set(old) | set(new)):
        if key.startswith(ARCHITECTURE) and key not in TRAINING_ONLY and old.get(key) != new.get(key):
            raise CheckpointError(f"the checkpoint was trained with {key}={old.get(key)}, this run has {new.get(key)}")
    for key in sorted(old):  # keys a checkpoint saved before they existed are not compared
        if key.startswith(SCHEDULE) and old[key] != new.get(key):
            raise CheckpointError(
                f"the checkpoint's run has {key}={old[key]}, this run has {new.get(key)}: a resumed run keeps its "
                f"batch size, epochs, optimizer settings and seed; start a new run to change them"
            )
    saved_world = saved.get("world_size", len(saved["rng"]))
    if saved_world != world:
        raise CheckpointError(
            f"the checkpoint was saved by {saved_world} process(es), this run has {world}: each process's "
            f"random streams are in it; resume with {saved_world}"
        )


def flatten(config: dict, prefix: str = "") -> dict:
    """{"model": {"depth": 9}} -> {"model.depth": 9}; lists and scalars are leaves."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
