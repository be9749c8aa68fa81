"""Vision Transformers with swappable patch embeddings and positional schemes.

`from vit import VisionTransformer, load_timm_weights` works; the model (and so torch) is
imported on first use, so that the scripts' light modules (`vit.cli`) start at once.
"""

from importlib import import_module

__all__ = ["VisionTransformer", "load_timm_weights"]
_WHERE = {"VisionTransformer": "vit.model.vision_transformer", "load_timm_weights": "vit.model.timm_weights"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'vit' has no attribute {name!r}")
