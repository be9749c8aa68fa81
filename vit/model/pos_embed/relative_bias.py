"""Learned relative position bias (Swin, Liu et al. 2021; BEiT, Bao et al. 2022), added to
the attention logits: per block and per head a table of (2Gh-1)(2Gw-1) entries, one for
each 2D offset (row and column difference) between a query patch and a key patch.
Zero-initialised (BEiT), so training starts from the position-free model.

Class token: it has no offset, so per block and head three more learned entries (BEiT):
class->patch, patch->class and class->class.
New grid: the offset index is recomputed for the grid. A smaller grid reads the centre of
the table; when the grid outgrows it, the table is resampled bicubically to cover the new
offsets (Swin's recipe for fine-tuning at a higher resolution). A state dict trained on
another grid is resampled the same way when loaded.
"""

from functools import partial

import torch
from torch import Tensor, nn

from vit.model.pos_embed.base import AttentionHook, PositionalScheme, resample_grid_table

NUM_CLASS_ENTRIES = 3  # class->patch, patch->class, class->class


class RelativeBias(PositionalScheme):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        gh, gw = self.grid_size
        self.offset_table = nn.Parameter(torch.zeros(self.depth, self.num_heads, 2 * gh - 1, 2 * gw - 1))
        self.class_table = (
            nn.Parameter(torch.zeros(self.depth, self.num_heads, NUM_CLASS_ENTRIES)) if self.num_prefix_tokens else None
        )
        self.register_buffer("cached_index", self.index(self.grid_size), persistent=False)

    def index(self, grid: tuple[int, int], device=None) -> Tensor:
        """(N, N) long: for each (query, key) pair, its entry in the flattened table(s).

        Offsets are counted from the centre of a table of size (2*Th-1, 2*Tw-1), where
        T is the larger of the training grid and `grid`.
        """
        th, tw = max(grid[0], self.grid_size[0]), max(grid[1], self.grid_size[1])
        rows, cols = torch.meshgrid(
            torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij"
        )
        rows, cols = rows.flatten(), cols.flatten()
        d_row = rows[:, None] - rows[None, :] + th - 1
        d_col = cols[:, None] - cols[None, :] + tw - 1
        index = d_row * (2 * tw - 1) + d_col
        if self.num_prefix_tokens:
            n_offsets = (2 * th - 1) * (2 * tw - 1)
            index = nn.functional.pad(index, (1, 0, 1, 0))
            index[0, 1:] = n_offsets  # class -> patch
            index[1:, 0] = n_offsets + 1  # patch -> class
            index[0, 0] = n_offsets + 2  # class -> class
        return index

    def bias(self, grid: tuple[int, int]) -> Tensor:
        """(depth, heads, N, N) bias for every block, with one gather for all of them."""
        grid = tuple(grid)
        table = self.offset_table
        if grid == self.grid_size:
            index = self.cached_index
        else:
            index = self.index(grid, table.device)
            cover = (2 * max(grid[0], self.grid_size[0]) - 1, 2 * max(grid[1], self.grid_size[1]) - 1)
            table = resample_grid_table(table.flatten(0, 1).permute(1, 2, 0), cover)
            table = table.permute(2, 0, 1).unflatten(0, (self.depth, self.num_heads))
        flat = table.flatten(2)
        if self.class_table is not None:
            flat = torch.cat([flat, self.class_table], dim=2)
        return flat[:, :, index]

    def attention_hooks(self, grid: tuple[int, int]) -> list[AttentionHook]:
        return [partial(add_bias, bias=b) for b in self.bias(grid).unbind(0)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "offset_table"
        incoming = state_dict.get(key)
        if incoming is not None and incoming.shape[:2] == self.offset_table.shape[:2]:
            resized = resample_grid_table(incoming.flatten(0, 1).permute(1, 2, 0), self.offset_table.shape[2:])
            state_dict[key] = resized.permute(2, 0, 1).unflatten(0, incoming.shape[:2])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def add_bias(q: Tensor, k: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # SDPA wants a float mask in the queries' dtype (bf16 under autocast)
    return q, k, bias.to(q.dtype)
