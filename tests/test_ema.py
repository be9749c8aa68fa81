"""The weight EMA: the same average and state dict as timm's ModelEmaV3."""

import torch
from timm.utils import ModelEmaV3

from conftest import perturb_, tiny_vit
from vit.training.ema import WeightEma


def test_the_ema_follows_the_weights_as_timms_does():
    model = tiny_vit(patch_embed="conv_stem")  # BatchNorm: running statistics and a counter too
    ours, timms = WeightEma(model, decay=0.9), ModelEmaV3(model, decay=0.9)
    model.train()
    for step in range(1, 6):  # the model changes in place, as training changes it
        perturb_(model)
        model(torch.randn(4, 3, 16, 16))  # moves the BatchNorm statistics and its counter
        ours.update(model, step=step)
        timms.update(model, step=step)
    expected = timms.state_dict()
    assert ours.state_dict().keys() == expected.keys()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7, msg=key)
    first = next(iter(expected))
    assert not torch.equal(expected[first], model.state_dict()[first[len("module.") :]])  # it lags the model

    restored = WeightEma(tiny_vit(patch_embed="conv_stem"), decay=0.9)
    restored.load_state_dict(timms.state_dict())  # a checkpoint written with timm's EMA
    for key, value in restored.state_dict().items():
        assert torch.equal(value, expected[key])
