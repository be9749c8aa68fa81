"""Which of torch's attention kernels a model's attention runs on, on a device, in a precision.

`F.scaled_dot_product_attention` picks a kernel per call from the inputs: flash and cuDNN
take no float mask that needs a gradient (relative_bias, alibi_2d), the memory-efficient
kernel does; an unsupported head width or dtype falls back to math. The choice is torch's
own (`torch._fused_sdp_choice`, which the dispatcher asks), read for the actual inputs of
one training forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

NAMES = {
    SDPBackend.MATH: "math",
    SDPBackend.FLASH_ATTENTION: "flash",
    SDPBackend.EFFICIENT_ATTENTION: "memory-efficient",
    SDPBackend.CUDNN_ATTENTION: "cuDNN",
}


def kernel_for(q, k, v, attn_mask=None) -> str:
    """torch's choice for these inputs; the mask as autocast would hand it over (q's dtype)."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:  # a torch without the probe
        return "unknown"
    mask = attn_mask.to(q.dtype) if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
    return NAMES.get(SDPBackend(choose(q, k, v, mask, 0.0, False)), "other")


@contextmanager
def recording(kernels: list[str]):
    """Every attention call made inside appends its kernel to `kernels`."""
    original = F.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, *args, **kwargs):
        kernels.append(kernel_for(q, k, v, attn_mask))
        return original(q, k, v, attn_mask, *args, **kwargs)

    F.scaled_dot_product_attention = record
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def attention_kernels(model: torch.nn.Module, x: torch.Tensor, autocast: Callable[[], AbstractContextManager]) -> str:
    """The kernels of one training-mode forward of `model` on `x` under `autocast` (the
    precision and the kernels it allows), in call order without repeats: "cuDNN", or
    "memory-efficient, math" when blocks differ."""
    kernels: list[str] = []
    was_training = model.training
    model.train()
    try:
        with autocast(), recording(kernels):
            model(x)
    finally:
        model.train(was_training)
    return ", ".join(dict.fromkeys(kernels)) or "none"
