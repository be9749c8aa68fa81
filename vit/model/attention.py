"""Multi-head self-attention through torch's fused scaled_dot_product_attention."""

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vit.model.pos_embed.base import AttentionHook


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos_hook: AttentionHook | None = None) -> Tensor:
        # same (qkv, head, channel) order as timm, so its weights load unchanged
        q, k, v = rearrange(self.qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.num_heads)
        bias = None
        if pos_hook is not None:  # relative bias / rotary act here
            q, k, bias = pos_hook(q, k)
        if bias is not None and bias.dim() == 3:  # (1, heads, N, N): the 4-D shape every kernel takes
            bias = bias[None]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj_drop(self.proj(rearrange(x, "b h n d -> b n (h d)")))
