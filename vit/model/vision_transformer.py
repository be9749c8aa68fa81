"""The Vision Transformer (Dosovitskiy et al. 2021), assembled from swappable parts.

    image -> patch embedding -> [class token] -> positional scheme (tokens) -> dropout
          -> depth x (Block (positional scheme inside attention) -> positional scheme (after
             the block)) -> pool -> norm -> head

`patch_embed` and `pos_embed` are factories (a class, or the partial that Hydra builds from
`configs/model/patch_embed/*.yaml` and `configs/model/pos_embed/*.yaml`), called with the
sizes the model knows. `pool="cls"` classifies from a prepended class token after a final
LayerNorm (timm's `norm`); `pool="gap"` averages the patch tokens, then applies the
LayerNorm (timm's `fc_norm`, big_vision's GAP head); `pool="seq"` is CCT's sequence pooling
(Hassani et al. 2021): the LayerNorm on every token, then their mean weighted by a softmax
over one learned score per token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vit.model.block import Block
from vit.model.patch_embed.conv import ConvPatchEmbed
from vit.model.pos_embed.base import PositionalScheme
from vit.model.pos_embed.learned_1d import Learned1d
from vit.model.sizes import check_vit_sizes, grid_for, pair


class VisionTransformer(nn.Module):
    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        pool: str = "cls",
        drop_path_rate: float = 0.0,
        dropout: float = 0.0,
        patch_embed: Callable[..., nn.Module] = ConvPatchEmbed,
        pos_embed: Callable[..., PositionalScheme] = Learned1d,
    ):
        super().__init__()
        check_vit_sizes(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            pool=pool,
        )
        self.img_size = pair(img_size)
        self.patch_size = patch_size
        self.pool = pool
        grid = self.grid_for(*self.img_size)
        num_prefix_tokens = 1 if pool == "cls" else 0

        self.patch_embed = patch_embed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        # timm's init for the class token: tiny but not zero
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 1e-6) if num_prefix_tokens else None
        self.pos_embed = pos_embed(
            dim=embed_dim, num_heads=num_heads, depth=depth, grid_size=grid, num_prefix_tokens=num_prefix_tokens
        )
        self.pos_drop = nn.Dropout(dropout)
        drop_path = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # grows linearly with depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dropout, drop_path[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.seq_score = nn.Linear(embed_dim, 1) if pool == "seq" else None
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_linear)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return grid_for((height, width), self.patch_size)

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) images of any size that is a multiple of the patch size -> (B, N, D) tokens."""
        grid = self.grid_for(*images.shape[-2:])
        x = self.patch_embed(images)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(self.pos_embed.add_to_tokens(x, grid))
        hooks = self.pos_embed.attention_hooks(grid) or [None] * len(self.blocks)
        for index, (block, hook) in enumerate(zip(self.blocks, hooks, strict=True)):
            x = self.pos_embed.after_block(block(x, hook), grid, index)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        if self.pool == "cls":
            x = self.norm(x[:, 0])
        elif self.pool == "gap":
            x = self.norm(x.mean(dim=1))
        else:  # seq: a learned softmax weighting of the normed tokens
            x = self.norm(x)
            x = (self.seq_score(x).softmax(dim=1) * x).sum(dim=1)
        return self.head(self.head_drop(x))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    def no_weight_decay(self) -> set[str]:
        """Names of parameters an optimizer should not decay: the class token, every
        positional table, and all norm weights and biases (every 1-D parameter)."""
        return {
            name
            for name, p in self.named_parameters()
            if p.ndim <= 1 or name == "cls_token" or name.startswith("pos_embed.")
        }

    def hidden_matrices(self) -> set[str]:
        """Names of the weight matrices of the blocks' linear layers (attention and MLP): the
        parameters Muon steps. Its authors keep the embeddings, the head, gains, biases and
        tables on AdamW."""
        return {f"blocks.{name}.weight" for name, m in self.blocks.named_modules() if isinstance(m, nn.Linear)}


def _init_linear(module: nn.Module) -> None:
    # timm's ViT init: truncated normal (std 0.02) for every Linear, zero biases
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
