"""Load the weights of a timm VisionTransformer into ours.

Supported: timm models with a conv patch embedding, a learned absolute embedding and
either a class token (`global_pool="token"`) or average pooling with `fc_norm`
(`class_token=False, global_pool="avg"`), loaded into our model built with
`patch_embed=conv`, `pos_embed=learned_1d` and `pool=cls` / `gap`. All other parameter
names already match timm's. A positional table trained on another (square) grid is
resampled bicubically on load, so ImageNet weights at 224 px load into a 32 px model.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from vit.errors import ConfigError
from vit.model.patch_embed.conv import ConvPatchEmbed
from vit.model.pos_embed.learned_1d import Learned1d
from vit.model.vision_transformer import VisionTransformer


def load_timm_weights(model: VisionTransformer, source: nn.Module | Mapping[str, Tensor]) -> None:
    """Copy a timm VisionTransformer (the module or its state dict) into `model`, strictly."""
    if not isinstance(model.patch_embed, ConvPatchEmbed) or not isinstance(model.pos_embed, Learned1d):
        raise ConfigError("timm weights load only into a model with patch_embed=conv and pos_embed=learned_1d")
    state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    has_cls = "cls_token" in state
    if has_cls != (model.pool == "cls"):
        raise ConfigError(
            f"the timm model {'has' if has_cls else 'has no'} class token but this model has pool={model.pool}"
        )
    renamed = {}
    for name, tensor in state.items():
        if name == "pos_embed":
            name = "pos_embed.table"
        elif name.startswith("fc_norm."):  # timm's norm after average pooling
            name = name.replace("fc_norm.", "norm.", 1)
        renamed[name] = tensor
    model.load_state_dict(renamed, strict=True)
