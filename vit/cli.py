"""What the scripts share: building from the config, and bad input as one line, exit 2."""

from __future__ import annotations

import sys
from typing import NoReturn

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch import nn


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def build_model(cfg: DictConfig) -> nn.Module:
    """`hydra.utils.instantiate(cfg.model)`; a bad model value exits with one clear line."""
    try:
        return hydra.utils.instantiate(cfg.model)
    except (hydra.errors.InstantiationException, OmegaConfBaseException, ValueError, TypeError) as e:
        cause = _root_cause(e)
        fail(f"model: {cause}" if isinstance(cause, (ValueError, TypeError)) else str(cause).splitlines()[0])
