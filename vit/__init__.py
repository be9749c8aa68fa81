"""Vision Transformers with swappable patch embeddings and positional schemes."""

from vit.model import VisionTransformer
from vit.timm_weights import load_timm_weights

__all__ = ["VisionTransformer", "load_timm_weights"]
