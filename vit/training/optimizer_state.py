"""Loading a torch optimizer's saved state without taking the saved device's kernel."""

from __future__ import annotations

import torch


def load_keeping_kernel(optimizer: torch.optim.Optimizer, state: dict) -> None:
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
