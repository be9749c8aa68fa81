"""SimpleViT's patch embedding (Beyer et al. 2022, vit-pytorch): cut the image into patches,
flatten each one, then LayerNorm -> Linear -> LayerNorm."""

from einops.layers.torch import Rearrange
from torch import Tensor, nn


class LinearPatchEmbed(nn.Module):
    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        patch_dim = in_chans * patch_size * patch_size
        self.to_patches = Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
        self.norm_in = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.norm_out = nn.LayerNorm(embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.norm_out(self.proj(self.norm_in(self.to_patches(images))))
