"""Datasets. Every data config builds one of these with `hydra.utils.instantiate(cfg.data)`;
its `loaders(...)` give batches of uint8 images and int64 labels on the training device,
which the trainer normalises (and, for in-memory data, augments) there."""

from vit.errors import DataError

__all__ = ["DataError"]
