"""A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

from torch import Tensor, nn

from vit.model.attention import Attention
from vit.model.pos_embed.base import AttentionHook


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = nn.Identity()
        if drop_path > 0:
            from timm.layers import DropPath  # timm takes seconds to import: only when a block drops paths

            self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, pos_hook: AttentionHook | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), pos_hook))
        return x + self.drop_path(self.mlp(self.norm2(x)))
