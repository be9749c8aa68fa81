"""Class folders to measure loaders on, made here: root/{train,val}/<class>/<image>.

    python -m vit.studies.class_folders jpegs DIR --classes 10 --train 200 --val 50
    python -m vit.studies.class_folders fashion-mnist DIR --train 10000 --val 10000

`jpegs`: 500x375 JPEGs, as photographs often are, of noise over a colour of each class (noise
keeps the files about as large and slow to decode as photographs'). `fashion-mnist`: the
first images of Debian's Fashion-MNIST files as 28x28 grey PNGs (train from the training
set, val from the test set).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def make_jpegs(root: Path, classes: int, per_class: tuple[int, int], size=(500, 375)) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for k in range(classes):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
                pixels[..., k % 3] += 150
                Image.fromarray(pixels).save(root / split / f"c{k}" / f"{i}.jpg", quality=90)
    return root


def export_fashion_mnist(root: Path, counts: tuple[int, int], source: str = "data") -> Path:
    """The first counts[0] training and counts[1] test images, as data=fashion_mnist finds them
    (in `source`, or Debian's package), written as PNGs under their class numbers."""
    from PIL import Image

    from vit.training.data.fashion_mnist import FashionMnist

    settings = dict(name="fashion_mnist", img_size=28, in_chans=1, num_classes=10, batch_size=1, mean=[0], std=[1])
    data = FashionMnist(root=source, download=False, **settings)
    for split, part, count in zip(("train", "val"), data.splits(), counts, strict=True):
        for i in range(min(count, len(part.labels))):
            folder = root / split / str(int(part.labels[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(part.images[i, 0].numpy()).save(folder / f"{i}.png")
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("jpegs", "fashion-mnist"))
    parser.add_argument("root", type=Path)
    parser.add_argument("--classes", type=int, default=10, help="jpegs: how many classes")
    parser.add_argument("--train", type=int, default=200, help="jpegs: images per class; fashion-mnist: in all")
    parser.add_argument("--val", type=int, default=50, help="as --train")
    args = parser.parse_args()
    if args.kind == "jpegs":
        print(make_jpegs(args.root, args.classes, (args.train, args.val)))
    else:
        print(export_fashion_mnist(args.root, (args.train, args.val)))
