"""A positional probe: a task that a ViT without position information cannot learn.

Each image holds two shapes on a noisy background, a filled square and a plus sign, each
inside its own `cell` x `cell` cell of the image (cells in different rows and columns), at a
random offset within the cell. The label says where the plus is relative to the square:
0 = left and above, 1 = left and below, 2 = right and above, 3 = right and below.

With `cell` equal to the patch size, each shape lies inside one patch, so the bag of patch
contents says nothing about the label: a model without positions is at chance (25%), and
any positional scheme can reach 100%. Generated deterministically from `split_seed`.
"""

from __future__ import annotations

import torch

from vit.errors import ConfigError
from vit.training.data.in_memory import InMemoryData, Split

SQUARE = [(dy, dx) for dy in range(3) for dx in range(3)]
PLUS = [(0, 1), (1, 0), (1, 1), (1, 2), (2, 1)]


class PositionProbe(InMemoryData):
    def __init__(self, *, cell: int = 4, num_train: int = 4096, num_val: int = 1024, split_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if cell < 3 or self.img_size % cell or self.img_size // cell < 2:
            raise ConfigError(
                f"data: the probe needs cells of at least 3 px that tile img_size {self.img_size} at least 2x2, "
                f"got cell {cell}"
            )
        self.cell, self.num_train, self.num_val, self.split_seed = cell, num_train, num_val, split_seed

    def splits(self) -> tuple[Split, Split]:
        return self.generate(self.num_train, self.split_seed), self.generate(self.num_val, self.split_seed + 1)

    def generate(self, n: int, seed: int) -> Split:
        g = torch.Generator().manual_seed(seed)
        cells, size = self.img_size // self.cell, self.img_size
        # two distinct rows and two distinct columns: shape 0 is the plus, shape 1 the square
        rows = torch.rand(n, cells, generator=g).argsort(dim=1)[:, :2]
        cols = torch.rand(n, cells, generator=g).argsort(dim=1)[:, :2]
        top = rows * self.cell + torch.randint(0, self.cell - 2, (n, 2), generator=g)
        left = cols * self.cell + torch.randint(0, self.cell - 2, (n, 2), generator=g)
        canvas = torch.randint(0, 64, (n, size, size), generator=g)
        brightness = torch.randint(160, 256, (n, 2), generator=g)
        sample = torch.arange(n)
        for shape, pixels in enumerate([PLUS, SQUARE]):
            for dy, dx in pixels:
                canvas[sample, top[:, shape] + dy, left[:, shape] + dx] = brightness[:, shape]
        plus_right = cols[:, 0] > cols[:, 1]
        plus_below = rows[:, 0] > rows[:, 1]
        labels = plus_right.long() * 2 + plus_below.long()
        images = canvas.to(torch.uint8)[:, None].expand(-1, self.in_chans, -1, -1).contiguous()
        return Split(images, labels)
