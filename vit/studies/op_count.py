"""How many operators one eager training step dispatches: on a GPU, roughly one kernel launch
each (views launch none), which is the host's work per step when nothing is compiled."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.views += func.is_view
        return func(*args, **(kwargs or {}))


def step_ops(model: torch.nn.Module, x: torch.Tensor, classes: int, autocast) -> tuple[int, int]:
    """(operators, of which views) of one forward, backward and fused AdamW step of `model`
    on `x` under `autocast`; the model's weights are left as they were."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    y = torch.arange(len(x), device=x.device) % classes
    model.train()
    counter = OpCounter()
    with counter:
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return counter.ops, counter.views
