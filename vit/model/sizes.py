"""The sizes a ViT needs to fit together, checked without torch.

`VisionTransformer` checks its arguments with this, and the scripts check the composed
config with it before they import torch, so a bad value is answered at once.
"""

from __future__ import annotations

from vit.errors import ConfigError

POOLS = ("cls", "gap", "seq")
# the model's arguments that check_vit_sizes checks, as named in configs/model/
SIZE_KEYS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "pool")


def check_vit_sizes(*, img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, pool) -> None:
    """Raise ValueError, in one line, for sizes no ViT can have."""
    for name, value in dict(
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
    ).items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if embed_dim % num_heads:
        raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    grid_for(img_size, patch_size)


def pair(size) -> tuple[int, int]:
    """An image size given as one int or as (height, width)."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def grid_for(img_size, patch_size: int) -> tuple[int, int]:
    """The patch grid (rows, columns) of an image size; ValueError if the patch does not divide it."""
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size  # no int(): traced shapes
    if height % patch_size or width % patch_size:
        raise ConfigError(f"image size {height}x{width} is not a multiple of the patch size {patch_size}")
    return height // patch_size, width // patch_size
