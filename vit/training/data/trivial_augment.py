"""TrivialAugment (Müller & Hutter 2021, "wide" magnitudes) for a whole batch on the device.

Each image gets one operation drawn uniformly from the 14 below, with a magnitude bin drawn
uniformly from 31, negated with probability 1/2 for the signed operations; the operations
are torchvision's own (`transforms.v2.functional`), as in `v2.TrivialAugmentWide`.

To stay free of per-sample Python and of host-device synchronisation, each operation is run
once on the whole batch at one magnitude per batch and sign, and every image keeps the
result of the operation it drew. So an image's operation, magnitude and sign are distributed
exactly as in TrivialAugment, but the images of one batch that draw the same operation share
its magnitude. As with crop and flip, the draws are made for the global batch, so they do not
depend on the number of processes.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

BINS = 31


def _shear(x: Tensor, m: float, axis: int) -> Tensor:
    shear = [0.0, 0.0]
    shear[axis] = math.degrees(math.atan(m))
    return TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0])


def _translate(x: Tensor, m: float, axis: int) -> Tensor:
    shift = [0, 0]
    shift[axis] = int(m)
    return TF.affine(x, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])


def _linear(top: float):
    """Magnitudes from 0 at bin 0 to `top` at the last bin."""
    return lambda b: top * b / (BINS - 1)


# name: (magnitude of bin b out of 0..BINS-1, signed, operation)
OPERATIONS = {
    "identity": (_linear(0.0), False, lambda x, m: x),
    "shear_x": (_linear(0.99), True, lambda x, m: _shear(x, m, 0)),
    "shear_y": (_linear(0.99), True, lambda x, m: _shear(x, m, 1)),
    "translate_x": (_linear(32.0), True, lambda x, m: _translate(x, m, 0)),
    "translate_y": (_linear(32.0), True, lambda x, m: _translate(x, m, 1)),
    "rotate": (_linear(135.0), True, lambda x, m: TF.rotate(x, m)),
    "brightness": (_linear(0.99), True, lambda x, m: TF.adjust_brightness(x, 1 + m)),
    "color": (_linear(0.99), True, lambda x, m: TF.adjust_saturation(x, 1 + m)),
    "contrast": (_linear(0.99), True, lambda x, m: TF.adjust_contrast(x, 1 + m)),
    "sharpness": (_linear(0.99), True, lambda x, m: TF.adjust_sharpness(x, 1 + m)),
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
