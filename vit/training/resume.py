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

ARCHITECTURE = {"model": None, "data": ("name", "img_size", "in_chans", "num_classes", "classes")}
TRAINING_ONLY = ("drop_path_rate", "dropout")  # may change between sessions of a run
# what fixes the schedule (steps per epoch, length, learning rates) and the random streams
SCHEDULE = {"data": ("batch_size",), "trainer": ("epochs",), "optim": None, "seed": ()}


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
        log.info(f"{run_dir} has finished all {cfg.trainer.epochs} epochs; nothing to train")
        return Start(finished=json.loads(summary.read_text()))
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
    old, new = saved["config"], OmegaConf.to_container(cfg, resolve=True)
    for group, keys in ARCHITECTURE.items():
        for key in keys or sorted(set(old.get(group, {})) | set(new[group])):
            if key not in TRAINING_ONLY and old.get(group, {}).get(key) != new[group].get(key):
                raise CheckpointError(
                    f"the checkpoint was trained with {group}.{key}={old.get(group, {}).get(key)}, "
                    f"this run has {new[group].get(key)}"
                )
    change = next(_schedule_changes(old, new), None)
    if change is not None:
        name, was, now = change
        raise CheckpointError(
            f"the checkpoint's run has {name}={was}, this run has {now}: a resumed run keeps its batch size, "
            f"epochs, optimizer settings and seed; start a new run to change them"
        )
    saved_world = saved.get("world_size", len(saved["rng"]))
    if saved_world != world:
        raise CheckpointError(
            f"the checkpoint was saved by {saved_world} process(es), this run has {world}: each process's "
            f"random streams are in it; resume with {saved_world}"
        )


def _schedule_changes(old: dict, new: dict):
    """(name, saved value, new value) of each SCHEDULE key that differs; keys a checkpoint
    saved before they existed are not compared."""
    for group, keys in SCHEDULE.items():
        if keys == ():  # a top-level key
            if group in old and old[group] != new.get(group):
                yield group, old[group], new.get(group)
            continue
        for key in keys or sorted(set(old.get(group, {})) | set(new[group])):
            if key in old.get(group, {}) and old[group][key] != new[group].get(key):
                yield f"{group}.{key}", old[group][key], new[group].get(key)
