"""Test-time augmentation: classify each image from several views of it, averaging the class
probabilities (as airbench does for CIFAR-10, and many Kaggle and competition recipes).

    none        the image alone: the model's logits, as without this module
    flip        the image and its mirror, at equal weight
    flip_shift  those, and both moved one pixel down-right and one up-left at half weight
                (six forward passes): the views that training's flip and padded crop make

Shifts fill the gap with zeros in pixel space, as the training crop pads. The views are
of the uint8 batch, before normalisation, so every evaluation path shares them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vit.training.data.augment import normalize

# (shift in pixels along both axes, mirrored, weight)
VIEWS = {
    "none": ((0, False, 1.0),),
    "flip": ((0, False, 1.0), (0, True, 1.0)),
    "flip_shift": ((0, False, 1.0), (0, True, 1.0), (1, False, 0.5), (1, True, 0.5), (-1, False, 0.5), (-1, True, 0.5)),
}


def shifted(images: Tensor, d: int) -> Tensor:
    """(B, C, H, W) images moved d pixels down and right (up and left for d < 0), zero-filled."""
    if d == 0:
        return images
    p = abs(d)
    padded = F.pad(images, (p, p, p, p))
    h, w = images.shape[-2:]
    return padded[..., p - d : p - d + h, p - d : p - d + w]


def view(images: Tensor, d: int, mirrored: bool) -> Tensor:
    moved = shifted(images, d)
    return moved.flip(-1) if mirrored else moved


def scores(net, images: Tensor, mean: Tensor, std: Tensor, autocast, tta: str = "none") -> Tensor:
    """(B, classes): the logits (tta none), or the log of the weighted mean of the views' class
    probabilities; either ranks the classes and gives the loss through cross-entropy."""
    if tta == "none":
        with autocast():
            return net(normalize(images, mean, std))
    views = VIEWS[tta]
    total = None
    for d, mirrored, weight in views:
        with autocast():
            logits = net(normalize(view(images, d, mirrored), mean, std))
        probs = logits.float().softmax(dim=-1) * weight
        total = probs if total is None else total + probs
    return (total / sum(w for _, _, w in views)).log()
