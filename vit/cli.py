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


class ConfigError(Exception):
    """A bad value in the config: one line, exit code 2."""


def instantiate_group(cfg: DictConfig, group: str):
    """`hydra.utils.instantiate(cfg.<group>)`, a bad value raised as one clear ConfigError."""
    try:
        return hydra.utils.instantiate(cfg[group])
    except (hydra.errors.InstantiationException, OmegaConfBaseException, ValueError, TypeError) as e:
        cause = _root_cause(e)
        if isinstance(cause, (ValueError, TypeError)):
            message = str(cause)
            raise ConfigError(message if message.startswith(f"{group}:") else f"{group}: {message}") from None
        raise ConfigError(str(cause).splitlines()[0]) from None


def build_model(cfg: DictConfig) -> nn.Module:
    return instantiate_group(cfg, "model")


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
