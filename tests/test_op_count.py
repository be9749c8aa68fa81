"""Counting the operators of an eager training step (the host's work per step on a GPU)."""

import torch

from conftest import tiny_vit
from vit.studies.op_count import step_ops


def test_a_step_is_counted_without_changing_the_model():
    x = torch.randn(2, 3, 16, 16)
    model = tiny_vit(scheme="learned_1d")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ops, views = step_ops(model, x, 7, torch.enable_grad)
    assert 0 < views < ops
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    deeper = tiny_vit(scheme="learned_1d", depth=3)  # one block more: more operators, the same per block
    more, _ = step_ops(deeper, x, 7, torch.enable_grad)
    assert more > ops
    rotary, _ = step_ops(tiny_vit(scheme="rope_2d"), x, 7, torch.enable_grad)
    assert rotary > ops  # queries and keys rotated in every block
