"""The 1,797 handwritten digits that ship inside scikit-learn (8x8, 17 grey levels): real
images that need no download. Upsampled once to `img_size` so a patch-4 ViT sees a grid,
and split 80/20, stratified, with a fixed seed (the same validation set for every run)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vit.training.data.in_memory import InMemoryData, Split


class Digits(InMemoryData):
    def __init__(self, *, val_fraction: float = 0.2, split_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.val_fraction, self.split_seed = val_fraction, split_seed

    def splits(self) -> tuple[Split, Split]:
        from sklearn.datasets import load_digits  # only this dataset needs scikit-learn

        digits = load_digits()
        images = torch.from_numpy(digits.images).float()[:, None] / 16  # (N, 1, 8, 8) in [0, 1]
        images = F.interpolate(images, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        labels = torch.from_numpy(digits.target).long()
        generator = torch.Generator().manual_seed(self.split_seed)
        is_val = torch.zeros(len(labels), dtype=torch.bool)
        for digit in range(10):  # stratified: the same fraction of every class
            members = (labels == digit).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            is_val[members[: round(len(members) * self.val_fraction)]] = True
        return Split(images[~is_val], labels[~is_val]), Split(images[is_val], labels[is_val])
