"""Learned 1D absolute embedding (ViT, Dosovitskiy et al. 2021): one trainable vector per
token, truncated-normal init with std 0.02, added to the tokens.

Class token: has its own entry (the first row), as in the original ViT and timm.
New grid: the patch rows are laid out on the training grid and resampled bicubically in
fp32 (timm's recipe); the class-token row is kept apart and unchanged. A state dict whose
table was trained on another (square) grid is resampled the same way when loaded.
"""

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from vit.model.pos_embed.base import PositionalScheme, resample_grid_table


class Learned1d(PositionalScheme):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        gh, gw = self.grid_size
        self.table = nn.Parameter(torch.empty(1, self.num_prefix_tokens + gh * gw, self.dim))
        nn.init.trunc_normal_(self.table, std=0.02)

    def table_for(self, grid: tuple[int, int]) -> Tensor:
        return resample_table(self.table, self.grid_size, grid, self.num_prefix_tokens)

    def add_to_tokens(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        return x + self.table_for(grid)

    def position_table(self, grid: tuple[int, int]) -> Tensor:
        return self.table_for(grid)[0, self.num_prefix_tokens :]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "table"
        incoming = state_dict.get(key)
        if incoming is not None and incoming.shape != self.table.shape:
            side = math.isqrt(incoming.shape[1] - self.num_prefix_tokens)
            if side * side + self.num_prefix_tokens == incoming.shape[1]:
                state_dict[key] = resample_table(incoming, (side, side), self.grid_size, self.num_prefix_tokens)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def resample_table(
    table: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix_tokens: int
) -> Tensor:
    """(1, prefix + old_h*old_w, D) -> (1, prefix + new_h*new_w, D)."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    prefix, patches = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    patches = rearrange(patches, "1 (h w) d -> h w d", h=old_grid[0], w=old_grid[1])
    patches = resample_grid_table(patches, new_grid)
    return torch.cat([prefix, rearrange(patches, "h w d -> 1 (h w) d")], dim=1)
