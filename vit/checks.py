"""Checks of training settings that need no library: one ConfigError line each."""

from __future__ import annotations

from vit.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TTA = ("none", "flip", "flip_shift")  # vit/training/tta.py's views, named without importing torch


def check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, got {name!r}")


def check_eval_every(every) -> None:
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"trainer.eval_every must be a whole number of epochs >= 1, got {every!r}")


def check_tta(tta, key: str = "trainer.tta") -> None:
    if tta not in TTA:
        raise ConfigError(f"{key} must be one of {', '.join(TTA)}, got {tta!r}")
