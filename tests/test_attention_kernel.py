"""The attention-kernel report: torch's choice for each scheme's real inputs."""

from functools import partial

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from conftest import SCHEMES, tiny_vit
from vit.studies import attention_kernel
from vit.studies.attention_kernel import attention_kernels
from vit.training import precision


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_block_is_probed_and_a_pinned_kernel_is_reported(scheme):
    model, x = tiny_vit(scheme=scheme), torch.randn(2, 3, 16, 16)
    seen = []
    real = attention_kernel.kernel_for
    with pytest.MonkeyPatch.context() as m:
        m.setattr(attention_kernel, "kernel_for", lambda *a: seen.append(a) or real(*a))
        kernel = attention_kernels(model, x, partial(precision.autocast, torch.device("cpu"), torch.bfloat16))
    assert kernel == "math"  # bf16 on a CPU: the repo allows only the math kernel (precision.py)
    assert len(seen) == len(model.blocks)  # one probe per block, on the block's own q, k, v and mask
    q, k, v, mask = seen[0]
    assert q.shape == (2, 4, 17, 8) and q.dtype == torch.bfloat16
    assert (mask is not None) == (scheme in ("relative_bias", "alibi_2d"))
    with sdpa_kernel(SDPBackend.MATH):
        assert attention_kernels(model, x, torch.enable_grad) == "math"


def test_the_probe_leaves_the_model_and_torch_as_it_found_them():
    model, original = tiny_vit().eval(), torch.nn.functional.scaled_dot_product_attention
    attention_kernels(model, torch.randn(1, 3, 16, 16), torch.enable_grad)
    assert not model.training and torch.nn.functional.scaled_dot_product_attention is original
    with pytest.raises(RuntimeError):  # also when the forward fails
        attention_kernels(model, torch.randn(1, 5, 16, 16), torch.enable_grad)
    assert not model.training and torch.nn.functional.scaled_dot_product_attention is original
