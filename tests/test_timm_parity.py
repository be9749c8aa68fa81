"""Same numbers as timm: logits after loading its weights, resampling, parameter counts."""

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from conftest import tiny_vit
from vit import VisionTransformer, load_timm_weights

SIZE = dict(patch_size=4, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.0, num_classes=10)


def timm_vit(img_size=32, **kwargs):
    return TimmViT(img_size=img_size, **{**SIZE, **kwargs}).eval()


def ours(img_size=32, pool="cls"):
    return VisionTransformer(img_size=img_size, pool=pool, **SIZE).eval()


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_logits_match_timm_with_a_class_token(qkv_bias):
    reference = timm_vit(qkv_bias=qkv_bias)
    model = VisionTransformer(img_size=32, qkv_bias=qkv_bias, **SIZE).eval()
    load_timm_weights(model, reference)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=1e-5)


def test_logits_match_timm_with_average_pooling():
    reference = timm_vit(class_token=False, global_pool="avg")
    model = ours(pool="gap")
    load_timm_weights(model, reference.state_dict())
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [16, 24, 48, 64])
def test_other_resolutions_match_timms_resampling(size):
    reference = timm_vit(dynamic_img_size=True)
    model = ours()
    load_timm_weights(model, reference)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=1e-5)


def test_weights_from_a_larger_grid_load_resampled():
    reference = timm_vit(img_size=64, dynamic_img_size=True)  # an 16x16 table
    model = ours(img_size=32)  # an 8x8 table
    load_timm_weights(model, reference)
    assert model.pos_embed.table.shape == (1, 65, 48)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=1e-5)


def test_loading_refuses_a_model_it_cannot_match():
    with pytest.raises(ValueError, match="learned_1d"):
        load_timm_weights(tiny_vit(scheme="rope_2d"), timm_vit())
    with pytest.raises(ValueError, match="class token"):
        load_timm_weights(ours(pool="gap"), timm_vit())


@pytest.mark.parametrize("name,width,heads", [("tiny", 192, 3), ("small", 384, 6), ("base", 768, 12)])
def test_parameter_counts_match_timm(name, width, heads):
    with torch.device("meta"):  # counts need no memory or init
        reference = timm.create_model(f"vit_{name}_patch16_224")
        model = VisionTransformer(img_size=224, patch_size=16, embed_dim=width, depth=12, num_heads=heads)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(reference)
