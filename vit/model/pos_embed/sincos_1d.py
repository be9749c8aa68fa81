"""Fixed 1D sinusoid of the original Transformer (Vaswani et al. 2017), over the patches in
raster order (row by row), added to the tokens: the fixed counterpart of `learned_1d`, and
the 1D side of the ViT paper's 1D-against-2D comparison (its appendix D.4). Not trainable.

With F = D/2 and w_k = 1 / 10000^(k/F), k = 0..F-1, the patch at sequence position p
(p = row * Gw + col, counted from 0) gets

    [ sin(p*w_0..F-1) | cos(p*w_0..F-1) ]

(the Transformer's interleaved sin/cos, its channels grouped as MAE's 1D table does: a fixed
permutation of the channels that the first linear layer absorbs). For any offset k,
PE(p + k) is a rotation of PE(p), so a dot product of two positions depends only on p - q.

Class token: nothing is added to it (a zero row, as in sincos_2d).
New grid: positions 0..Gh*Gw-1 of the new grid's raster order, so a patch one row down is
Gw positions further on a grid of another width: the 2D layout is not known to a 1D scheme.
"""

import torch
from torch import Tensor

from vit.errors import ConfigError
from vit.model.pos_embed.base import FixedTable


class SinCos1d(FixedTable):
    def __init__(self, *, temperature: float = 10000.0, **kwargs):
        super().__init__(**kwargs)
        if self.dim % 2:
            raise ConfigError(f"sincos_1d needs an even embed_dim, got {self.dim}")
        self.temperature = temperature
        self.cache_training_grid()

    def embedding(self, grid: tuple[int, int], device=None) -> Tensor:
        """(prefix + Gh*Gw, D) with zero rows for the prefix tokens."""
        half = self.dim // 2
        omega = self.temperature ** -(torch.arange(half, device=device) / half)
        angles = torch.arange(grid[0] * grid[1], device=device, dtype=torch.float32)[:, None] * omega
        pe = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return torch.cat([pe.new_zeros(self.num_prefix_tokens, self.dim), pe])
