"""AdamW (or Muon with AdamW) without weight decay on what the model names, and a per-step
warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from vit.errors import ConfigError
from vit.training.muon import Muon, MuonWithAdamW
from vit.training.optimizer_state import load_keeping_kernel


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    fused: bool,
    name: str = "adamw",
    muon_momentum: float = 0.95,
    muon_lr_scale: float = 1.0,
    muon_ns_dtype: torch.dtype = torch.bfloat16,
) -> torch.optim.Optimizer:
    """AdamW on every parameter (`adamw`), or Muon on the blocks' weight matrices and AdamW on
    the rest (`muon`, vit/training/muon.py). Muon's step is scaled to the RMS of AdamW's, so the
    one learning rate and weight decay serve both; `muon_lr_scale` multiplies Muon's, and its
    Newton-Schulz iterations run in `muon_ns_dtype`."""
    if name not in ("adamw", "muon"):
        raise ConfigError(f"optim.name must be adamw or muon, got {name!r}")
    skip = model.no_weight_decay()
    hidden = model.hidden_matrices() if name == "muon" else set()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n not in skip and n not in hidden], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n in skip and n not in hidden], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)
    if name == "adamw":
        return adamw
    matrices = [p for n, p in params if n in hidden]
    muon = Muon(
        matrices, lr=lr * muon_lr_scale, weight_decay=weight_decay, momentum=muon_momentum, ns_dtype=muon_ns_dtype
    )
    return MuonWithAdamW(muon, adamw)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The saved moments, steps and hyper-parameters, with this device's kernel kept."""
    if isinstance(optimizer, MuonWithAdamW):
        optimizer.load_state_dict(state)  # each part through load_keeping_kernel
    else:
        load_keeping_kernel(optimizer, state)


def warmup_epochs(setting: float | str, epochs: int) -> float:
    """optim.warmup_epochs: a number of epochs, or auto: a tenth of the run, at most 5 epochs.
    Long runs keep the usual 5 (DeiT's and timm's 5 of 300); a short run is not spent warming
    up (5 of 8 epochs would be 62% of it)."""
    return min(5.0, epochs / 10) if setting == "auto" else float(setting)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/warmup_steps to lr, then cosine decay to lr*min_lr_ratio."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
