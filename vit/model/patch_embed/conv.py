"""Patch embedding of the ViT paper: a Conv2d with kernel = stride = patch size, which is a
linear map of each non-overlapping patch (the same parameter layout as timm's PatchEmbed)."""

from einops import rearrange
from torch import Tensor, nn


class ConvPatchEmbed(nn.Module):
    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return rearrange(self.proj(images), "b d h w -> b (h w) d")
