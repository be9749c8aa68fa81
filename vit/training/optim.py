"""AdamW without weight decay on what the model names, and a per-step warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool
) -> torch.optim.AdamW:
    skip = model.no_weight_decay()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n not in skip], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n in skip], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The saved moments, steps and hyper-parameters, with this device's kernel kept: torch
    takes `fused` and `foreach` from the saved groups too, so a checkpoint from another
    device (or from before fused AdamW on the CPU) would silently change the kernel."""
    kernels = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kernel in zip(optimizer.param_groups, kernels, strict=True):
        group.update(kernel)
        for p in group["params"] if group["fused"] else []:  # fused kernels take the step on the device
            step = optimizer.state.get(p, {}).get("step")
            if step is not None:
                optimizer.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)


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
