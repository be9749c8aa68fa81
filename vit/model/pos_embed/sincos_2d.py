"""Fixed 2D sine-cosine embedding (MAE, He et al. 2022; SimpleViT, Beyer et al. 2022),
added to the tokens. Not trainable: it is recomputed, never stored in a checkpoint.

Layout of the D channels, with F = D/4 and frequencies w_k = 1 / 10000^(k/F), k = 0..F-1,
for the patch in row r and column c of the grid (both counted from 0):

    [ sin(r*w_0..F-1) | cos(r*w_0..F-1) | sin(c*w_0..F-1) | cos(c*w_0..F-1) ]

Class token: nothing is added to it (a zero row, the MAE convention).
New grid: recomputed from the new grid's rows and columns.
"""

import torch
from torch import Tensor

from vit.errors import ConfigError
from vit.model.pos_embed.base import FixedTable, grid_coords


class SinCos2d(FixedTable):
    def __init__(self, *, temperature: float = 10000.0, **kwargs):
        super().__init__(**kwargs)
        if self.dim % 4:
            raise ConfigError(f"sincos_2d needs embed_dim divisible by 4, got {self.dim}")
        self.temperature = temperature
        self.cache_training_grid()

    def embedding(self, grid: tuple[int, int], device=None) -> Tensor:
        """(prefix + Gh*Gw, D) with zero rows for the prefix tokens."""
        quarter = self.dim // 4
        omega = self.temperature ** -(torch.arange(quarter, device=device) / quarter)
        angles = grid_coords(grid, device)[:, :, None] * omega  # (N, 2, F): row, col
        pe = torch.cat([angles[:, 0].sin(), angles[:, 0].cos(), angles[:, 1].sin(), angles[:, 1].cos()], -1)
        return torch.cat([pe.new_zeros(self.num_prefix_tokens, self.dim), pe])
