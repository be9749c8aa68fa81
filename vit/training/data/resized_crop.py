"""Resize a batch of crops of different sizes to one size, on the training device.

On a GPU (`resize_crops`), each crop sits in the top-left corner of a padded uint8 batch
(B, H, W, C); its own height and width say how much of that is image. Resizing is linear and
separable, so each image becomes two small matrices, rows (out, H) and columns (out, W),
holding the weights of torch's antialiased bilinear resize (`F.interpolate(...,
antialias=True)`, the kernel behind torchvision's `resized_crop` on tensors): the whole batch
is then two batched matrix products, with no per-image Python. A mirrored image is its column
matrix reversed. On a CPU (`resize_each`), that kernel itself, once per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_weights(sizes: Tensor, padded: int, out: int) -> Tensor:
    """(B, out, padded) weights: row o of image b mixes its first sizes[b] pixels.

    torch's antialiased bilinear filter: a triangle centred on the output pixel's centre in
    input coordinates, stretched by the scale when shrinking (so every input pixel counts),
    normalised to sum 1 over the pixels it reaches."""
    sizes = sizes.to(torch.float32)[:, None, None]
    scale = sizes / out
    stretch = scale.clamp(min=1.0)
    centre = scale * (torch.arange(out, device=sizes.device, dtype=torch.float32)[None, :, None] + 0.5)
    pixel = torch.arange(padded, device=sizes.device, dtype=torch.float32)[None, None, :]
    weights = (1 - ((pixel - centre + 0.5) / stretch).abs()).clamp(min=0) * (pixel < sizes)
    return weights / weights.sum(-1, keepdim=True)


def resize_crops(crops: Tensor, heights: Tensor, widths: Tensor, out: int, mirror: Tensor | None = None) -> Tensor:
    """uint8 (B, H, W, C) crops, each heights[b] x widths[b] in its top-left corner ->
    uint8 (B, C, out, out), each mirrored where `mirror` is true."""
    resized = resize_to_float(crops, heights, widths, out, mirror)
    return resized.round_().clamp_(0, 255).to(torch.uint8).contiguous()


def resize_to_float(crops: Tensor, heights: Tensor, widths: Tensor, out: int, mirror: Tensor | None = None) -> Tensor:
    """resize_crops before rounding: float (B, C, out, out)."""
    _, h, w, _ = crops.shape
    rows = resize_weights(heights, h, out)
    cols = resize_weights(widths, w, out)
    if mirror is not None:
        cols = torch.where(mirror[:, None, None], cols.flip(1), cols)
    images = crops.permute(0, 3, 1, 2).float()  # (B, C, H, W)
    # in TF32 where the trainer allows it (a pixel may round to the next level): at 224 px the
    # two products are about 0.22 GFLOP per image, against 7.5 for a vit_tiny training step
    return rows[:, None] @ images @ cols[:, None].transpose(-1, -2)


def resize_each(crops: list[Tensor], out: int, mirror: list[bool]) -> Tensor:
    """uint8 (H, W, C) crops of any sizes -> uint8 (B, C, out, out), one call of torch's
    antialiased bilinear kernel per image (its vectorised uint8 path), mirrored where `mirror`
    is true: on a CPU, where the batched matrices would spend most of their work on the zeros
    around each filter's band. (Flipping the batch's mirrored images at once costs 4x more.)"""
    resized = [
        F.interpolate(crop.permute(2, 0, 1)[None], size=(out, out), mode="bilinear", antialias=True) for crop in crops
    ]
    return torch.cat([image.flip(-1) if m else image for image, m in zip(resized, mirror, strict=True)])
