"""An exponential moving average of the weights (Polyak averaging), for evaluation.

The same average as timm's ModelEmaV3 at a fixed decay (its default), and the same state
dict (`module.` keys), but the tensor lists are gathered once: timm walks both models'
`state_dict()` on every step, which is most of the update's cost for a small model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.bind(model)

    def bind(self, model: nn.Module) -> None:
        """Pair each average with the model tensor it follows: floating tensors are averaged,
        the others (counters) copied. The model's tensors are updated in place by training,
        so the pairs stay valid."""
        ours, theirs = self.module.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
        pairs = [(ours[k].data, theirs[k].data) for k in ours]
        self.averaged = [pair for pair in pairs if pair[0].is_floating_point()]
        self.copied = [pair for pair in pairs if not pair[0].is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module | None = None, step: int | None = None) -> None:
        """One step of ema = decay * ema + (1 - decay) * model; step 1 (the first optimizer
        step) copies the weights, as timm's does. `model` is only for timm's signature: the
        model is the one bound at construction."""
        decay = self.decay if step is None or step > 1 else 0.0
        if self.averaged:
            ema, current = zip(*self.averaged, strict=True)
            torch._foreach_lerp_(list(ema), list(current), 1.0 - decay)
        for ema_t, model_t in self.copied:
            ema_t.copy_(model_t)
