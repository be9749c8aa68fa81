"""Conditional positional encoding (CPE; Chu et al., "Conditional Positional Encodings for
Vision Transformers", ICLR 2023): a position encoding generator (PEG), a 3x3 depthwise
convolution over the patch tokens laid out on their grid, added to them, after the first
block (the placement the paper found best). Position comes from the convolution's zero
padding at the borders and from each patch's neighbourhood.

Parameters: one 3x3 kernel and a bias per channel (10·D).
Class token: passes by untouched.
New grid: nothing to do; a convolution runs on any grid.
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from vit.model.pos_embed.base import PositionalScheme


class ConditionalPosition(PositionalScheme):
    def __init__(self, *, after: int = 0, kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.after = after  # the block whose output is mixed (0: the first)
        self.peg = nn.Conv2d(self.dim, self.dim, kernel_size, padding=kernel_size // 2, groups=self.dim)

    def after_block(self, x: Tensor, grid: tuple[int, int], index: int) -> Tensor:
        if index != self.after:
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        image = rearrange(patches, "b (h w) d -> b d h w", h=grid[0], w=grid[1])
        mixed = rearrange(self.peg(image), "b d h w -> b (h w) d")
        return torch.cat([prefix, patches + mixed], dim=1)
