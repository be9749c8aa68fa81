"""Building what a config describes: `hydra.utils.instantiate` with bad input told from bugs.

Torch-free at import, like vit/cli.py, and below both the scripts and the training loop.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import omegaconf
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from vit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torch import nn

# where a config's own errors are raised: a traceback that stays in these never ran our code
CONFIG_MACHINERY = tuple(["<frozen"] + [str(Path(module.__file__).parent) for module in (hydra, omegaconf, importlib)])


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
