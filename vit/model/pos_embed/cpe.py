"""Conditional positional encoding (CPE; Chu et al., "Conditional Positional Encodings for
Vision Transformers", ICLR 2023): a position encoding generator (PEG), a 3x3 depthwise
convolution over the patch tokens laid out on their grid, added to them, after the first
block (the placement the paper found best for one PEG). Position comes from the
convolution's zero padding at the borders and from each patch's neighbourhood. `after`
may also list several blocks, each with its own PEG (the paper's CPVT places them after
blocks 0 to 5).

Parameters: one 3x3 kernel and a bias per channel (10·D) per PEG.
Class token: passes by untouched.
New grid: nothing to do; a convolution runs on any grid.
"""

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from vit.errors import ConfigError
from vit.model.pos_embed.base import PositionalScheme


class ConditionalPosition(PositionalScheme):
    def __init__(self, *, after: int | Sequence[int] = 0, kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        blocks = [after] if isinstance(after, int) else list(after)
        if not blocks or len(set(blocks)) < len(blocks) or not all(0 <= b < self.depth for b in blocks):
            raise ConfigError(f"cpe: after must name distinct blocks between 0 and {self.depth - 1}, got {after}")
        # one PEG per block it follows, keyed by that block's index
        self.pegs = nn.ModuleDict({str(b): peg(self.dim, kernel_size) for b in blocks})
        self.register_load_state_dict_pre_hook(rename_single_peg)

    def after_block(self, x: Tensor, grid: tuple[int, int], index: int) -> Tensor:
        if str(index) not in self.pegs:
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        image = rearrange(patches, "b (h w) d -> b d h w", h=grid[0], w=grid[1])
        mixed = rearrange(self.pegs[str(index)](image), "b d h w -> b (h w) d")
        return torch.cat([prefix, patches + mixed], dim=1)


def peg(dim: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)


def rename_single_peg(module: ConditionalPosition, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints from before `after` took a list hold one PEG as `peg.*`: it is the first."""
    first = next(iter(module.pegs))
    for name in ("weight", "bias"):
        if f"{prefix}peg.{name}" in state_dict:
            state_dict[f"{prefix}pegs.{first}.{name}"] = state_dict.pop(f"{prefix}peg.{name}")
