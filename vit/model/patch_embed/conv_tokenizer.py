"""Convolutional tokenizer of the Compact Convolutional Transformer (CCT, Hassani et al. 2021):
log2(patch size) stages of a 3x3 stride-1 convolution, ReLU and a 3x3 stride-2 max-pool.

Unlike `conv_stem` (stride-2 convolutions), every convolution here sees the full resolution
of its stage, so the first one looks at every pixel neighbourhood of the image; the pooling
then halves the grid. It reaches the grid of a patch-size conv, with overlapping receptive
fields and a small translation invariance inside each token.

Widths double at every stage and end at embed_dim, at least 16 each (for width 64 and
patch 4: 32, 64); `hidden_width` sets every stage but the last instead (CCT's own code uses
64, its `in_planes`). No bias and no normalisation, as published; `batch_norm=True` adds a
BatchNorm after each convolution, as `conv_stem` has.

`padding="circular"` wraps the image around at its borders, in the convolutions and the
pools: the tokenizer then treats every place alike (moving the image 4 px moves every token
one place, with nothing to mark an edge), so it carries no absolute position of its own.
CCT's zero padding (`zeros`) marks the border tokens, and through them where the others are.
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from vit.errors import ConfigError
from vit.model.patch_embed.conv_stem import halvings


class ConvTokenizer(nn.Module):
    def __init__(
        self,
        *,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        batch_norm: bool = False,
        hidden_width: int | None = None,
        padding: str = "zeros",
    ):
        super().__init__()
        if padding not in ("zeros", "circular"):
            raise ConfigError(f"conv_tokenizer padding={padding!r}: choose zeros or circular")
        stages = halvings("conv_tokenizer", patch_size)
        layers, width_in = [], in_chans
        for i in range(stages):
            width = embed_dim if i == stages - 1 else hidden_width or max(16, embed_dim // 2 ** (stages - 1 - i))
            wrap = padding == "circular"
            # CCT's ReLU then max-pool, in the other order: ReLU is monotone, so max(relu(x)) =
            # relu(max(x)) and the gradient reaches the same place, bit for bit; the ReLU and
            # its backward then touch a quarter of the elements
            layers += [
                nn.Conv2d(width_in, width, kernel_size=3, stride=1, padding=1, padding_mode=padding, bias=False),
                *([nn.BatchNorm2d(width)] if batch_norm else []),
                *([nn.CircularPad2d(1)] if wrap else []),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=0 if wrap else 1),
                nn.ReLU(inplace=True),
            ]
            width_in = width
        self.tokenizer = nn.Sequential(*layers)
        for module in self.tokenizer:
            if isinstance(module, nn.Conv2d):  # CCT's init for its convolutions
                nn.init.kaiming_normal_(module.weight)
        # channels-last weights (and input) put the convolutions on oneDNN's fast path: forward and
        # backward of 256 images ran 1.7x to 3.3x faster in bf16 than contiguous (a busy machine)
        self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> Tensor:
        if images.device.type == "cpu":
            return self._tokens_outside_compile(images)
        return self._tokens(images)

    def _tokens(self, images: Tensor) -> Tensor:
        return rearrange(self.tokenizer(images.to(memory_format=torch.channels_last)), "b d h w -> b (h w) d")

    # On a CPU, torch.compile's own max-pool (with the indices its backward needs) is far slower
    # than oneDNN's: compiled around it, the Fashion-MNIST recipe's whole training step ran at
    # 0.65x the images/s of the same step with the tokenizer left eager (2-core Zen 4, bf16).
    # Its convolutions are oneDNN calls either way, so the break costs only one graph boundary.
    _tokens_outside_compile = torch.compiler.disable(_tokens)
