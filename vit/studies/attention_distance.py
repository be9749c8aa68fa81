"""Mean attention distance (ViT paper, Figure 7 right): for each head of each block, the
distance in pixels from a query patch to the key patches, weighted by the attention
weights, averaged over queries and images. Small: a head that looks at its neighbourhood
(like a convolution); large: one that looks across the image.

The weights are recomputed from the queries and keys (and any bias) that the positional
scheme's hooks give, exactly as `Attention` feeds them to the fused kernel, so training
never pays for materialising them. Only patch queries and patch keys are counted (the
weights renormalised over the patch keys), with patch centres `patch` pixels apart.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from vit.model.pos_embed.base import grid_coords


@torch.no_grad()
def mean_attention_distance(model, images: Tensor) -> Tensor:
    """(depth, heads) mean attention distance in pixels, for normalised `images` (B, C, H, W)."""
    grid = model.grid_for(*images.shape[-2:])
    prefix = 0 if model.cls_token is None else 1
    centres = grid_coords(grid, images.device) * model.patch_size
    distance = torch.cdist(centres, centres)  # (N, N) pixels between patch centres
    x = model.patch_embed(images)
    if model.cls_token is not None:
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = model.pos_embed.add_to_tokens(x, grid)
    hooks = model.pos_embed.attention_hooks(grid) or [None] * len(model.blocks)
    per_block = []
    for index, (block, hook) in enumerate(zip(model.blocks, hooks, strict=True)):
        weights = attention_weights(block.attn, block.norm1(x), hook)[..., prefix:, prefix:]
        weights = weights / weights.sum(dim=-1, keepdim=True)  # over the patch keys
        per_block.append((weights * distance).sum(dim=-1).mean(dim=(0, 2)))  # (heads,)
        x = model.pos_embed.after_block(block(x, hook), grid, index)
    return torch.stack(per_block)


def attention_weights(attn, x: Tensor, hook) -> Tensor:
    """(B, heads, N, N) softmax weights of one attention layer for its input `x`."""
    q, k, _ = rearrange(attn.qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=attn.num_heads)
    bias = None
    if hook is not None:
        q, k, bias = hook(q, k)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    return scores.float().softmax(dim=-1)
