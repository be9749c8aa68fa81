"""Axial 2D rotary position embedding (RoFormer, Su et al. 2021; RoPE-ViT, Heo et al. 2024):
the queries and keys of patch tokens are rotated pairwise in every block by angles
proportional to the patch's row (half of the pairs) and column (the other half), so the
score q.k of two patches depends only on their 2D offset. No trainable parameters.

With head width d there are d/2 rotary pairs, (x_i, x_{i+d/2}) ("rotate half" layout).
Pair k < d/4 turns by r*w_k and pair d/4 + k by c*w_k, for the patch in row r, column c,
with w_k = theta^(-4k/d) and theta = 100 (RoPE-ViT's axial setting).

Class token: not rotated (cos 1, sin 0), so its scores carry no position.
New grid: the angles are recomputed for the new rows and columns (positions in patch units,
so a larger grid extrapolates to new offsets rather than squeezing the old ones).
"""

from functools import partial

import torch
from torch import Tensor

from vit.errors import ConfigError
from vit.model.pos_embed.base import AttentionHook, PositionalScheme, grid_coords


class Rope2d(PositionalScheme):
    def __init__(self, *, theta: float = 100.0, **kwargs):
        super().__init__(**kwargs)
        self.head_dim = rotary_head_dim(self.dim, self.num_heads, "rope_2d")
        self.theta = theta
        cos, sin = self.angles(self.grid_size)
        self.register_buffer("cached_cos", cos, persistent=False)
        self.register_buffer("cached_sin", sin, persistent=False)

    def angles(self, grid: tuple[int, int], device=None) -> tuple[Tensor, Tensor]:
        """cos and sin, each (prefix + Gh*Gw, head_dim), fp32; identity rows for the prefix."""
        quarter = self.head_dim // 4
        omega = self.theta ** -(torch.arange(quarter, device=device) * 4 / self.head_dim)
        angles = (grid_coords(grid, device)[:, :, None] * omega).flatten(1)  # (N, d/2): rows, cols
        angles = torch.cat([angles, angles], dim=-1)  # same angle for both halves of a pair
        angles = torch.cat([angles.new_zeros(self.num_prefix_tokens, self.head_dim), angles])
        return angles.cos(), angles.sin()

    def attention_hooks(self, grid: tuple[int, int]) -> list[AttentionHook]:
        if tuple(grid) == self.grid_size:
            cos, sin = self.cached_cos, self.cached_sin
        else:
            cos, sin = self.angles(grid, self.cached_cos.device)
        return [partial(rotate_both, cos=cos, sin=sin)] * self.depth


def rotary_head_dim(dim: int, num_heads: int, scheme: str) -> int:
    """The head width, which a rotary scheme splits into row and column quarters."""
    head_dim = dim // num_heads
    if head_dim % 4:
        raise ConfigError(f"{scheme} needs a head width (embed_dim / num_heads) divisible by 4, got {head_dim}")
    return head_dim


def rotate_both(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, None]:
    """An attention hook: queries and keys rotated alike, no bias."""
    return rotate(q, cos, sin), rotate(k, cos, sin), None


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) of (..., N, d) by the angle whose cos/sin are given."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))  # rotate in fp32 under autocast
    x1, x2 = wide.chunk(2, dim=-1)
    return (wide * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)
