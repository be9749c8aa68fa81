"""ALiBi in two dimensions (Press et al., "Train Short, Test Long", ICLR 2022, carried to a
patch grid): a fixed bias on the attention logits, -m_h·‖Δ‖, where ‖Δ‖ is the Euclidean
distance between query and key patch in patch units and m_h = 2^(-8h/H) for head
h = 1..H (ALiBi's geometric slopes): some heads look far, others near.

Parameters: none.
Class token: its entries (as query and as key) get no bias.
New grid: the distances are recomputed for the grid, so a larger grid extrapolates to
longer distances, as ALiBi does for longer texts.
"""

from functools import partial

import torch
from torch import Tensor

from vit.model.pos_embed.base import AttentionHook, PositionalScheme, grid_coords
from vit.model.pos_embed.relative_bias import add_bias


class Alibi2d(PositionalScheme):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("cached_bias", self.bias(self.grid_size), persistent=False)

    def slopes(self, device=None) -> Tensor:
        heads = torch.arange(1, self.num_heads + 1, device=device, dtype=torch.float32)
        return 2.0 ** (-8.0 * heads / self.num_heads)

    def bias(self, grid: tuple[int, int], device=None) -> Tensor:
        """(heads, prefix + Gh*Gw, prefix + Gh*Gw) fp32, zero in the class token's row and column."""
        coords = grid_coords(grid, device)
        distance = torch.cdist(coords, coords)  # (N, N) in patch units
        bias = -self.slopes(device)[:, None, None] * distance
        p = self.num_prefix_tokens
        return torch.nn.functional.pad(bias, (p, 0, p, 0))

    def attention_hooks(self, grid: tuple[int, int]) -> list[AttentionHook]:
        bias = self.cached_bias if tuple(grid) == self.grid_size else self.bias(grid, self.cached_bias.device)
        return [partial(add_bias, bias=bias)] * self.depth
