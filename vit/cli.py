"""What the scripts share: config resolvers, composing and checking a config, building from
it, and bad input reported as one line with exit code 2 (never a traceback wall).

Nothing here imports torch: a script checks its config with `check_config` first, so a bad
override or value is answered at once, and imports the heavy libraries only afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vit.checks import check_eval_every, check_precision, check_tta
from vit.errors import ConfigError
from vit.instantiate import with_class_count
from vit.model.sizes import SIZE_KEYS, check_vit_sizes
from vit.registry import CONFIGS
from vit.training.distributed import launch_time

OmegaConf.register_new_resolver("launch_time", launch_time, replace=True)
# sweep job folders are named after their overrides, in characters that need no quoting
# in a later override: model/pos_embed=rope_2d,seed=1 -> model.pos_embed-rope_2d__seed-1
OmegaConf.register_new_resolver(
    "path_safe", lambda s: s.replace("/", ".").replace("=", "-").replace(",", "__"), replace=True
)


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def without_data(cfg: DictConfig) -> DictConfig:
    """with_class_count for a script that builds the model only: without the data, one line
    that says what to set."""
    from vit.errors import DataError

    try:
        return with_class_count(cfg)
    except DataError as e:
        fail(f"{e}; or set data.num_classes to build the model without the data")


def check_config(cfg: DictConfig) -> None:
    """What is wrong with a training config whatever the machine, found without torch:
    model sizes that cannot fit together, a missing value, an unknown precision.
    Raises ConfigError (one line). What needs the libraries (a scheme's own constraint,
    the data) is checked when it is built."""
    try:
        sizes = {key: cfg.model[key] for key in SIZE_KEYS}
        if sizes["num_classes"] is None and "data" in cfg and cfg.data.get("num_classes", 0) is None:
            sizes["num_classes"] = 1  # left to the data: counted when the data is built
        check_vit_sizes(**sizes)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    if "trainer" in cfg:
        check_precision(cfg.trainer.precision)
        check_eval_every(cfg.trainer.get("eval_every", 1))
        check_tta(cfg.trainer.get("tta", "none"))
    if cfg.get("optim", {}).get("name", "adamw") not in ("adamw", "muon"):
        raise ConfigError(f"optim.name must be adamw or muon, got {cfg.optim.name!r}")
    warmup = cfg.get("optim", {}).get("warmup_epochs", 0)
    if warmup != "auto" and (not isinstance(warmup, (int, float)) or isinstance(warmup, bool) or warmup < 0):
        raise ConfigError(f"optim.warmup_epochs must be auto or a number of epochs >= 0, got {warmup!r}")


def sleep_while_waiting(cfg: DictConfig) -> None:
    """When the data loads in worker processes, let the training step's threads sleep when they
    wait instead of spinning: a spinning thread holds a core that a loader needs (28 px class
    folders, 2 loaders on 2 cores: 585-887 img/s per epoch spinning, 938-979 sleeping). OpenMP
    reads this when torch loads it, so call it before importing torch; a value the user set stays."""
    data = cfg.get("data", {})
    if data.get("num_workers", 0) != 0 and not data.get("cache", False):  # the cache trains with no workers
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = (), hydra_node: bool = False) -> DictConfig:
    """A config of configs/ composed in-process, as the scripts would see it; with
    `hydra_node`, Hydra's own node too (`cfg.hydra.runtime.choices`, `cfg.hydra.overrides`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=hydra_node)


def exit_on(errors: dict[type[BaseException], int], task: Callable[[], object]):
    """Run `task`; an error of a listed type becomes `error: <message>` and that exit code."""
    try:
        return task()
    except tuple(errors) as e:
        fail(str(e), code=next(code for kind, code in errors.items() if isinstance(e, kind)))


class RunDirCheck(Callback):
    """Hydra creates the run directory and writes its files there before the job starts;
    check first that it can, so that an unwritable place is one line, not Hydra's traceback,
    and that no live process is using it (its stored config would be overwritten)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from vit.folder_lock import in_use

        # under torchrun rank 0 alone holds the folder, and the other ranks share it
        reason = in_use(Path(config.hydra.run.dir), "run folder") if os.environ.get("RANK", "0") == "0" else None
        if reason:
            fail(reason, code=1)
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(folder: str) -> None:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.touch()
            probe.unlink()
        except OSError as e:
            fail(f"cannot write the run directory {path}: {e.strerror or e}")
