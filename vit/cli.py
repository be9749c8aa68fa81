"""What the scripts share: config resolvers, building from the config, and bad input
reported as one line with exit code 2 (never a traceback wall)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, NoReturn

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from vit.distributed import launch_time

OmegaConf.register_new_resolver("launch_time", launch_time, replace=True)
# sweep job folders are named after their overrides; keep `model/pos_embed=x` one folder deep
OmegaConf.register_new_resolver("path_safe", lambda s: s.replace("/", "."), replace=True)


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def instantiate_group(cfg: DictConfig, group: str):
    """`hydra.utils.instantiate(cfg.<group>)`; a bad value exits with one clear line."""
    try:
        return hydra.utils.instantiate(cfg[group])
    except (hydra.errors.InstantiationException, OmegaConfBaseException, ValueError, TypeError) as e:
        cause = _root_cause(e)
        if isinstance(cause, (ValueError, TypeError)):
            message = str(cause)
            fail(message if message.startswith(f"{group}:") else f"{group}: {message}")
        fail(str(cause).splitlines()[0])


def build_model(cfg: DictConfig) -> nn.Module:
    return instantiate_group(cfg, "model")


def run_reporting_errors(task: Callable[[], object], expected: tuple[type[BaseException], ...]):
    """Run `task`; an expected error becomes `error: <message>` and exit code 1."""
    try:
        return task()
    except expected as e:
        fail(str(e), code=1)


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
