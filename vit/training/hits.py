"""Which predictions are right: the one rule the trainer's evaluation and eval.py share, so
that ties (frequent among bf16 logits) break alike and eval.py repeats the logged accuracy."""

from torch import Tensor


def hits(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(top-1, top-5) per image, as booleans; top-5 is top-all below 5 classes."""
    ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == labels[:, None]
    return ranked[:, 0], ranked.any(dim=-1)
