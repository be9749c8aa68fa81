"""The interface every positional scheme implements.

Self-attention is permutation-equivariant: without position information a ViT cannot
tell where a patch came from. A scheme can answer that in three places, and each method
below is one of them. The defaults do nothing, so a scheme overrides only what it uses.

- ``add_to_tokens(x, grid)``: tokens ``(B, prefix + Gh*Gw, D)`` in, tokens out
  (absolute schemes: learned 1D, fixed 2D sin-cos).
- ``attention_hooks(grid)``: one function per block, ``(q, k) -> (q, k, attn_bias)``,
  applied to ``(B, heads, N, head_dim)`` queries and keys just before
  ``scaled_dot_product_attention``; ``attn_bias`` is an additive ``(heads, N, N)`` float
  mask or ``None`` (relative position bias, rotary embedding). ``None`` instead of the
  list means the scheme does nothing inside attention.
- ``after_block(x, grid, index)``: tokens ``(B, prefix + Gh*Gw, D)`` in, tokens out, after
  block ``index`` (0-based), before the next (conditional encodings, which mix each patch
  with its neighbours on the grid).
- ``position_table(grid)``: the ``(Gh*Gw, D)`` vectors that encode each patch position, for
  inspection (the similarity maps in TensorBoard), or ``None`` if the scheme has none.

Every method takes the patch grid ``(Gh, Gw)`` of the current input, so a model built at
one resolution runs at any other: how each scheme handles a new grid lives next to what
it does. ``grid_size`` given at construction is the training grid (the size of any table).

The class token, if the model has one, is token 0; ``num_prefix_tokens`` says whether it
is there (1) or not (0, average pooling). Each scheme documents what it does to it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

AttentionHook = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor | None]]


class PositionalScheme(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        depth: int,
        grid_size: tuple[int, int],
        num_prefix_tokens: int,
    ):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.depth = depth
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens

    def add_to_tokens(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        return x

    def attention_hooks(self, grid: tuple[int, int]) -> list[AttentionHook] | None:
        return None

    def after_block(self, x: Tensor, grid: tuple[int, int], index: int) -> Tensor:
        return x

    def position_table(self, grid: tuple[int, int]) -> Tensor | None:
        return None


class FixedTable(PositionalScheme):
    """A scheme whose vectors are a fixed function of the grid, added to the tokens: computed
    once for the training grid (a buffer, not saved in a checkpoint) and again for any other.
    A subclass defines `embedding` and calls `cache_training_grid()` once it can compute it."""

    def embedding(self, grid: tuple[int, int], device=None) -> Tensor:
        """(prefix + Gh*Gw, D), with zero rows for the prefix tokens."""
        raise NotImplementedError

    def cache_training_grid(self) -> None:
        self.register_buffer("cached", self.embedding(self.grid_size), persistent=False)

    def add_to_tokens(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        pe = self.cached if tuple(grid) == self.grid_size else self.embedding(grid, x.device)
        return x + pe

    def position_table(self, grid: tuple[int, int]) -> Tensor:
        return self.embedding(grid)[self.num_prefix_tokens :]


def grid_coords(grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """(Gh*Gw, 2) float (row, col) of each patch, row-major like the token order."""
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], device=device, dtype=torch.float32),
        torch.arange(grid[1], device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)


def resample_grid_table(table: Tensor, new_grid: tuple[int, int]) -> Tensor:
    """Bicubic resampling of a (Gh, Gw, C) table to (new_h, new_w, C), in fp32.

    Antialiased and align_corners=False, as timm's resample_abs_pos_embed, so that a
    table resampled here matches one resampled by timm.
    """
    if tuple(table.shape[:2]) == tuple(new_grid):
        return table
    out = torch.nn.functional.interpolate(
        table.permute(2, 0, 1).unsqueeze(0).float(),
        size=tuple(new_grid),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )
    return out.squeeze(0).permute(1, 2, 0).to(table.dtype)
