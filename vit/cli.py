"""What the scripts share: config resolvers, composing and checking a config, building from
it, and bad input reported as one line with exit code 2 (never a traceback wall).

Nothing here imports torch: a script checks its config with `check_config` first, so a bad
override or value is answered at once, and imports the heavy libraries only afterwards.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import hydra
import omegaconf
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vit.errors import ConfigError
from vit.model.sizes import SIZE_KEYS, check_vit_sizes
from vit.registry import CONFIGS
from vit.training.distributed import launch_time

if TYPE_CHECKING:
    from torch import nn

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# where a config's own errors are raised: a traceback that stays in these never ran our code
CONFIG_MACHINERY = tuple(["<frozen"] + [str(Path(module.__file__).parent) for module in (hydra, omegaconf, importlib)])

OmegaConf.register_new_resolver("launch_time", launch_time, replace=True)
# sweep job folders are named after their overrides, in characters that need no quoting
# in a later override: model/pos_embed=rope_2d,seed=1 -> model.pos_embed-rope_2d__seed-1
OmegaConf.register_new_resolver(
    "path_safe", lambda s: s.replace("/", ".").replace("=", "-").replace(",", "__"), replace=True
)


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _ran_code(error: BaseException) -> bool:
    """True when the error's traceback reaches code other than Hydra's, OmegaConf's and the
    importer's: the target ran and failed, a bug. An error that never got there (an unknown
    argument, a target that does not exist, a missing value) is the config's."""
    frame = error.__traceback__
    while frame is not None:
        if not frame.tb_frame.f_code.co_filename.startswith(CONFIG_MACHINERY):
            return True
        frame = frame.tb_next
    return False


def instantiate_group(cfg: DictConfig, group: str):
    """`hydra.utils.instantiate(cfg.<group>)`. A bad value (our checks' ConfigError, or an
    argument, target or value the code never got to see) is one clear ConfigError; a
    DataError stays one; any other error from inside our code is a bug and is raised as
    it is, traceback and all."""
    from vit.training.data import DataError

    try:
        return hydra.utils.instantiate(cfg[group])
    except (hydra.errors.InstantiationException, OmegaConfBaseException) as e:
        cause = _root_cause(e)
        if isinstance(cause, ConfigError):
            message = str(cause)
            raise ConfigError(message if message.startswith(f"{group}:") else f"{group}: {message}") from None
        if isinstance(cause, DataError) or (cause is not e and _ran_code(cause)):
            raise cause from None
        message = str(cause).splitlines()[0]
        raise ConfigError(f"{group}: {message}" if isinstance(cause, (TypeError, ImportError)) else message) from None


def build_model(cfg: DictConfig) -> nn.Module:
    return instantiate_group(cfg, "model")


def with_class_count(cfg: DictConfig) -> DictConfig:
    """A copy of cfg with data.num_classes filled in when it is left to the data (null, class
    folders): the model, the checkpoint and the resume checks all read the number."""
    if cfg.data.get("num_classes", 0) is not None:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.data.num_classes = instantiate_group(cfg, "data").class_count()
    return cfg


def without_data(cfg: DictConfig) -> DictConfig:
    """with_class_count for a script that builds the model only: without the data, one line
    that says what to set."""
    from vit.training.data import DataError

    try:
        return with_class_count(cfg)
    except DataError as e:
        fail(f"{e}; or set data.num_classes to build the model without the data")


def check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, got {name!r}")


def check_eval_every(every) -> None:
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"trainer.eval_every must be a whole number of epochs >= 1, got {every!r}")


TTA = ("none", "flip", "flip_shift")  # vit/training/tta.py's views, named without importing torch


def check_tta(tta, key: str = "trainer.tta") -> None:
    if tta not in TTA:
        raise ConfigError(f"{key} must be one of {', '.join(TTA)}, got {tta!r}")


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
    """Hydra creates the run directory before the job starts; check first that it can,
    so that an unwritable place is one line, not Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
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
