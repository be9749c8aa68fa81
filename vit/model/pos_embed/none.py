"""No position information at all: the baseline that shows why a ViT needs positions.

With average pooling the model is then invariant to the order of the patches (shuffle
them and the logits do not change); with a class token it is too, since the class token
attends to every patch alike. Class token: untouched. New grid: nothing to do.
"""

from vit.model.pos_embed.base import PositionalScheme


class NoPosition(PositionalScheme):
    pass
