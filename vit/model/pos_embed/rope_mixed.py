"""RoPE-Mixed (Heo et al., "Rotary Position Embedding for Vision Transformer", ECCV 2024):
rotary embedding with learnable frequencies, per block and per head. Rotary pair j of a
patch in row r, column c turns by fx_j·c + fy_j·r, so a pair can follow any direction on
the grid, not only rows or columns as in `rope_2d`.

Initialisation (the paper's): per block and head a random direction φ; the first d/4 pairs
point along φ and the other d/4 along φ + 90°, with magnitudes 1/θ^(4k/d), k = 0..d/4-1,
θ = 10. With d the head width there are d/2 pairs, laid out (x_i, x_{i+d/2}) as in
`rope_2d`, whose rotation this is when fx = 0, fy = ω on the first d/4 pairs and fx = ω,
fy = 0 on the others (ω_k = 100^(-4k/d)).

Parameters: depth · heads · d (fx and fy for each pair).
Class token: not rotated.
New grid: the angles are linear in (row, col), so any grid is computed the same way.
"""

import math
from functools import partial

import torch
from torch import Tensor, nn

from vit.model.pos_embed.base import AttentionHook, PositionalScheme, grid_coords
from vit.model.pos_embed.rope_2d import rotary_head_dim, rotate_both


class RopeMixed(PositionalScheme):
    def __init__(self, *, theta: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.head_dim, self.theta = rotary_head_dim(self.dim, self.num_heads, "rope_mixed"), theta
        # (depth, heads, d/2 pairs, 2): each pair's frequency along rows (y) and columns (x)
        self.freqs = nn.Parameter(self.initial_freqs())

    def initial_freqs(self) -> Tensor:
        quarter = self.head_dim // 4
        magnitude = self.theta ** -(torch.arange(quarter) * 4 / self.head_dim)
        phi = torch.rand(self.depth, self.num_heads, 1) * 2 * math.pi
        directions = torch.cat([phi.expand(-1, -1, quarter), phi.expand(-1, -1, quarter) + math.pi / 2], dim=-1)
        magnitude = torch.cat([magnitude, magnitude])
        return torch.stack([magnitude * directions.sin(), magnitude * directions.cos()], dim=-1)  # (y, x)

    def angles(self, grid: tuple[int, int]) -> Tensor:
        """(depth, heads, prefix + Gh*Gw, d) fp32; zero for the class token."""
        rows, cols = grid_coords(grid, self.freqs.device).unbind(-1)  # (N,) each
        freqs = self.freqs.float()[:, :, None]  # (depth, heads, 1, d/2, 2)
        # elementwise, not a matrix product: fy·row + fx·col, exact when one of them is 0
        angles = rows[:, None] * freqs[..., 0] + cols[:, None] * freqs[..., 1]
        angles = torch.cat([angles, angles], dim=-1)  # both halves of a pair turn by the same angle
        return nn.functional.pad(angles, (0, 0, self.num_prefix_tokens, 0))

    def attention_hooks(self, grid: tuple[int, int]) -> list[AttentionHook]:
        angles = self.angles(grid)
        cos, sin = angles.cos(), angles.sin()
        return [partial(rotate_both, cos=c, sin=s) for c, s in zip(cos.unbind(0), sin.unbind(0), strict=True)]
