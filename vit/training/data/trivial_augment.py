"""TrivialAugment (Müller & Hutter 2021, "wide" magnitudes) for a whole batch on the device.

Each image gets one operation drawn uniformly from the 14 below, with a magnitude bin drawn
uniformly from 31, negated with probability 1/2 for the signed operations; the operations
are torchvision's (`transforms.v2.functional`, as in `v2.TrivialAugmentWide`); the
geometric ones and sharpness give its pixels from matrices and a kernel made once per device.

To stay free of per-sample Python and of host-device synchronisation, each operation is run
once on the whole batch at one magnitude per batch and sign, and every image keeps the
result of the operation it drew. So an image's operation, magnitude and sign are distributed
exactly as in TrivialAugment, but the images of one batch that draw the same operation share
its magnitude. As with crop and flip, the draws are made for the global batch, so they do not
depend on the number of processes.
"""

from __future__ import annotations

import functools
import math

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

BINS = 31


def _linear(top: float):
    """Magnitudes from 0 at bin 0 to `top` at the last bin."""
    return lambda b: top * b / (BINS - 1)


# --- the geometric operations, without host data per batch ------------------------------------
# torchvision's tensor affine and rotate build their matrix on the image's device from a Python
# list on every call: a blocking copy on CUDA. Every matrix an operation can draw (31 bins, two
# signs) is made once per device and image size instead, by torchvision's formulas and in its
# order of operations, so the results are the same to the bit (tests/test_data.py).


def _inverse_affine(
    center: tuple[float, float], angle: float, translate: tuple[float, float], shear: tuple[float, float]
):
    """The inverse of T * C * R(angle) * SHy * SHx * C^-1 (scale 1), as a 2x3 row-major list:
    where each output pixel samples the input, in pixels from the image centre."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty)
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return m


def _geometry(name: str, m: float, h: int, w: int) -> list[float] | None:
    """The inverse matrix of a geometric operation at magnitude m; None for the others."""
    if name in ("shear_x", "shear_y"):  # about the top-left corner, as PIL's TrivialAugment
        degrees = math.degrees(math.atan(m))
        shear = (0.0, degrees) if name == "shear_y" else (degrees, 0.0)
        return _inverse_affine((-w * 0.5, -h * 0.5), 0.0, (0.0, 0.0), shear)
    if name in ("translate_x", "translate_y"):
        shift = [0.0, 0.0]
        shift[name == "translate_y"] = float(int(m))
        return _inverse_affine((0.0, 0.0), 0.0, (shift[0], shift[1]), (0.0, 0.0))
    if name == "rotate":  # torchvision's rotate turns the other way from its affine
        return _inverse_affine((0.0, 0.0), -(m % 360), (0.0, 0.0), (0.0, 0.0))
    return None


@functools.lru_cache(maxsize=32)
def _grids(device: torch.device, h: int, w: int) -> tuple[dict[tuple[str, float], int], Tensor, Tensor]:
    """For one device and image size: the index of each (operation, magnitude), its rescaled
    matrix (K, 3, 2) and the pixel-centre grid (1, h*w, 3), all made once."""
    keys, matrices = {}, []
    for name, (magnitude, signed, _) in OPERATIONS.items():
        for m in {s * magnitude(b) for b in range(BINS) for s in ((1, -1) if signed else (1,))}:
            matrix = _geometry(name, m, h, w)
            if matrix is not None:
                keys[(name, m)] = len(matrices)
                matrices.append(matrix)
    theta = torch.tensor(matrices, dtype=torch.float32).reshape(-1, 2, 3)
    rescaled = theta.transpose(1, 2).div_(torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32))
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    return keys, rescaled.to(device), base.view(1, h * w, 3)


def _warp(x: Tensor, name: str, m: float) -> Tensor:
    """uint8 (B, C, H, W) sampled (nearest, zeros outside) through the operation's matrix."""
    b, _, h, w = x.shape
    if name == "rotate":  # torchvision's exact paths for quarter turns
        angle = m % 360
        if angle == 0:
            return x.clone()
        if angle == 180:
            return torch.rot90(x, k=2, dims=(-2, -1))
        if h == w and angle in (90, 270):
            return torch.rot90(x, k=1 if angle == 90 else 3, dims=(-2, -1))
    keys, rescaled, base = _grids(x.device, h, w)
    i = keys[(name, m)]
    grid = base.bmm(rescaled[i : i + 1]).view(1, h, w, 2).expand(b, -1, -1, -1)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(x.dtype)


@functools.lru_cache(maxsize=32)
def _smoothing(device: torch.device, channels: int) -> Tensor:
    """PIL's SMOOTH filter (1s around a 5, over 13), made once per device."""
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=torch.float32)
    return kernel.expand(channels, 1, 3, 3).to(device)


def _sharpness(x: Tensor, factor: float) -> Tensor:
    """torchvision's adjust_sharpness (blend with the smoothed image, borders kept), with its kernel made once."""
    _, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x
    out = x.to(dtype=torch.float32, copy=True)
    blurred = torch.nn.functional.conv2d(out, _smoothing(x.device, c), groups=c).round_()
    view = out[..., 1:-1, 1:-1]
    view.add_(blurred.sub_(view), alpha=1.0 - factor)
    return out.clamp_(0, 255).to(x.dtype)


# name: (magnitude of bin b out of 0..BINS-1, signed, operation)
OPERATIONS = {
    "identity": (_linear(0.0), False, lambda x, m: x),
    "shear_x": (_linear(0.99), True, lambda x, m: _warp(x, "shear_x", m)),
    "shear_y": (_linear(0.99), True, lambda x, m: _warp(x, "shear_y", m)),
    "translate_x": (_linear(32.0), True, lambda x, m: _warp(x, "translate_x", m)),
    "translate_y": (_linear(32.0), True, lambda x, m: _warp(x, "translate_y", m)),
    "rotate": (_linear(135.0), True, lambda x, m: _warp(x, "rotate", m)),
    "brightness": (_linear(0.99), True, lambda x, m: TF.adjust_brightness(x, 1 + m)),
    "color": (_linear(0.99), True, lambda x, m: TF.adjust_saturation(x, 1 + m)),
    "contrast": (_linear(0.99), True, lambda x, m: TF.adjust_contrast(x, 1 + m)),
    "sharpness": (_linear(0.99), True, lambda x, m: _sharpness(x, 1 + m)),
    "posterize": (lambda b: 8 - round(b * 6 / (BINS - 1)), False, lambda x, m: TF.posterize(x, int(m))),
    "solarize": (lambda b: 255.0 * (1 - b / (BINS - 1)), False, lambda x, m: TF.solarize(x, m)),
    "autocontrast": (_linear(0.0), False, lambda x, m: TF.autocontrast(x)),
    "equalize": (_linear(0.0), False, lambda x, m: TF.equalize(x)),
}


def draw(generator: torch.Generator, host: torch.Generator, global_batch: int, offset: int, local: int):
    """This rank's slice of the per-image draws (operation index, negate), on the generator's
    device, and each operation's magnitude for this batch: host numbers, drawn from the
    batch's own `host` stream, so no value waits for the device."""
    device = generator.device
    choice = torch.randint(0, len(OPERATIONS), (global_batch,), device=device, generator=generator)
    negate = torch.rand(global_batch, device=device, generator=generator) < 0.5
    bins = torch.randint(0, BINS, (len(OPERATIONS),), generator=host).tolist()
    magnitudes = {name: magnitude(b) for (name, (magnitude, _, _)), b in zip(OPERATIONS.items(), bins, strict=True)}
    return choice[offset : offset + local], negate[offset : offset + local], magnitudes


def trivial_augment(images: Tensor, choice: Tensor, negate: Tensor, magnitudes: dict[str, float]) -> Tensor:
    """uint8 (B, C, H, W) -> uint8, image i transformed by operation choice[i]."""
    out = images
    for k, (name, (_, signed, operation)) in enumerate(OPERATIONS.items()):
        if name == "identity":
            continue
        picked = choice == k
        m = magnitudes[name]
        if signed:
            out = torch.where((picked & negate)[:, None, None, None], operation(images, -m), out)
            picked = picked & ~negate
        out = torch.where(picked[:, None, None, None], operation(images, m), out)
    return out
