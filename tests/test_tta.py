"""Test-time augmentation: the views, and the averaged scores."""

import contextlib

import pytest
import torch

from vit.checks import TTA, check_tta
from vit.errors import ConfigError
from vit.training.data.augment import normalize
from vit.training.tta import VIEWS, scores, view


def test_the_views_move_and_mirror_the_image_filling_with_zeros():
    image = torch.arange(1, 10, dtype=torch.uint8).reshape(1, 1, 3, 3)
    assert view(image, 0, False) is image
    assert view(image, 1, False)[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]  # down and right
    assert view(image, -1, False)[0, 0].tolist() == [[5, 6, 0], [8, 9, 0], [0, 0, 0]]  # up and left
    assert view(image, 1, True)[0, 0].tolist() == [[0, 0, 0], [2, 1, 0], [5, 4, 0]]  # moved, then mirrored


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 5))


@pytest.mark.parametrize("tta", TTA)
def test_scores_are_log_probabilities_of_the_views_and_none_is_the_logits(tta):
    model, images = net(), torch.randint(0, 256, (3, 2, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor([0.4, 0.5]), torch.tensor([0.2, 0.25])
    out = scores(model, images, mean, std, contextlib.nullcontext, tta)
    if tta == "none":
        assert torch.equal(out, model(normalize(images, mean, std)))
    else:
        assert torch.allclose(out.exp().sum(-1), torch.ones(3))
    if tta == "flip":  # the image and its mirror score alike
        assert torch.allclose(out, scores(model, images.flip(-1), mean, std, contextlib.nullcontext, tta))


def test_the_command_line_knows_every_view_set_and_no_other():
    assert set(TTA) == set(VIEWS)
    with pytest.raises(ConfigError, match="trainer.tta must be one of none, flip, flip_shift, got 'crops'"):
        check_tta("crops")
