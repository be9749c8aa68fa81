"""The model: every combination runs at any resolution, and only `none` ignores positions."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from conftest import ALL_COMBINATIONS, PATCH_EMBEDS, POOLS, SCHEMES, perturb_, tiny_vit
from vit.errors import ConfigError
from vit.studies.evaluation import shuffle_patches


@pytest.mark.parametrize("patch_embed,pool,scheme", ALL_COMBINATIONS)
def test_every_combination_trains_at_three_resolutions(patch_embed, pool, scheme):
    model = tiny_vit(patch_embed, pool, scheme)
    for size in (8, 16, 24):  # smaller, training and larger grid
        model.zero_grad()
        logits = model(torch.randn(2, 3, size, size))
        assert logits.shape == (2, 7)
        assert torch.isfinite(logits).all()
        logits.logsumexp(-1).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"no finite gradient at {size} px for {missing}"


@pytest.mark.parametrize("patch_embed", ["conv", "linear"])
@pytest.mark.parametrize("pool", POOLS)
def test_without_positions_shuffling_patches_changes_nothing(patch_embed, pool):
    model = perturb_(tiny_vit(patch_embed, pool, "none")).double().eval()
    images = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    shuffled = shuffle_patches(images, 4, torch.Generator().manual_seed(0))
    assert not torch.equal(images, shuffled)
    torch.testing.assert_close(model(shuffled), model(images), rtol=0, atol=1e-10)


@pytest.mark.parametrize("patch_embed", ["conv", "linear"])
@pytest.mark.parametrize("pool", ["cls", "gap"])
@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "none"])
def test_with_positions_shuffling_patches_changes_the_logits(patch_embed, pool, scheme):
    model = perturb_(tiny_vit(patch_embed, pool, scheme)).double().eval()
    images = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    shuffled = shuffle_patches(images, 4, torch.Generator().manual_seed(0))
    # in float64, where "changes nothing" above means 1e-10: a fixed bias such as alibi_2d's
    # changes a barely trained model's logits by only about 1e-3
    assert (model(shuffled) - model(images)).abs().max() > 1e-6


OVERLAPPING = {"conv_stem", "conv_tokenizer"}  # convolutional stems: receptive fields cross patch borders


@pytest.mark.parametrize("patch_embed", list(PATCH_EMBEDS))
def test_a_token_sees_across_its_patch_border_only_with_a_convolutional_stem(patch_embed):
    embed = PATCH_EMBEDS[patch_embed](patch_size=4, in_chans=3, embed_dim=32).eval()
    images = torch.rand(1, 3, 16, 12)
    tokens = embed(images)
    assert tokens.shape == (1, 4 * 3, 32)
    nudged = images.clone()
    nudged[:, :, 1, 3] += 1.0  # the last pixel of patch (0, 0), next to the border with patch (0, 1)
    changed = (embed(nudged) - tokens).abs().amax(dim=-1)[0]
    assert changed[0] > 0  # its own patch's token
    assert (changed[1] > 0) == (patch_embed in OVERLAPPING)  # the neighbour's, only through a conv stem
    assert changed[-1] == 0  # patch (3, 2), far away: beyond every stem's reach


def test_conv_tokenizer_halves_the_grid_per_stage_and_normalises_when_asked():
    from vit.model.patch_embed.conv_tokenizer import ConvTokenizer

    plain = ConvTokenizer(patch_size=8, in_chans=1, embed_dim=64)
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (1, 16, (1, 1)),
        (16, 32, (1, 1)),
        (32, 64, (1, 1)),
    ]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    normed = ConvTokenizer(patch_size=8, in_chans=1, embed_dim=64, batch_norm=True)
    kinds = [type(m).__name__ for m in normed.tokenizer]
    assert kinds == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"] * 3  # normalised before the non-linearity
    assert normed(torch.rand(4, 1, 32, 24)).shape == (4, 4 * 3, 64)
    cct = ConvTokenizer(patch_size=8, in_chans=3, embed_dim=96, hidden_width=64)  # CCT's in_planes
    widths = [(c.in_channels, c.out_channels) for c in cct.modules() if isinstance(c, torch.nn.Conv2d)]
    assert widths == [(3, 64), (64, 64), (64, 96)]


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_the_tokenizer_pools_before_its_relu_to_cct_s_values_and_gradients_bit_for_bit(padding):
    from vit.model.patch_embed.conv_tokenizer import ConvTokenizer

    torch.manual_seed(0)
    tokenizer = ConvTokenizer(patch_size=4, in_chans=1, embed_dim=32, padding=padding)
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    def cct(x):  # as published: convolution, ReLU, then the 3x3 stride-2 max-pool
        for conv in (m for m in tokenizer.tokenizer if isinstance(m, torch.nn.Conv2d)):
            x = F.relu(conv(x))
            x = (
                F.max_pool2d(F.pad(x, (1,) * 4, mode="circular"), 3, 2)
                if padding == "circular"
                else F.max_pool2d(x, 3, 2, 1)
            )
        return x.flatten(2).transpose(1, 2)

    grads = []
    for tokens in (tokenizer(images), cct(images)):
        weights = [m.weight for m in tokenizer.modules() if isinstance(m, torch.nn.Conv2d)]
        grads.append((tokens, torch.autograd.grad((tokens * torch.linspace(-1, 1, 32)).sum(), weights)))
    (ours, ours_grads), (published, published_grads) = grads
    assert (ours > 0).any() and (ours == 0).any()  # the ReLU cuts somewhere
    assert torch.equal(ours, published)
    assert all(torch.equal(a, b) for a, b in zip(ours_grads, published_grads, strict=True))


def test_a_circular_tokenizer_marks_no_edge_and_zero_padding_does():
    from vit.model.patch_embed.conv_tokenizer import ConvTokenizer

    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    moved = images.roll(shifts=(4, 8), dims=(2, 3))  # one token down, two right, wrapping round
    for padding, equivariant in (("circular", True), ("zeros", False)):
        torch.manual_seed(0)
        tokenizer = ConvTokenizer(patch_size=4, in_chans=1, embed_dim=32, padding=padding).eval()
        with torch.no_grad():
            grid = tokenizer(images).unflatten(1, (7, 7))
            grid_of_moved = tokenizer(moved).unflatten(1, (7, 7))
        assert grid.shape == (2, 7, 7, 32)  # the same 7x7 grid either way
        rolled = torch.allclose(grid_of_moved, grid.roll(shifts=(1, 2), dims=(1, 2)), atol=1e-5)
        assert rolled == equivariant, padding  # zero padding: border tokens differ from inner ones
    with pytest.raises(ConfigError, match="padding='reflect'"):
        ConvTokenizer(patch_size=4, in_chans=1, embed_dim=32, padding="reflect")


def test_image_size_not_a_multiple_of_the_patch_raises_naming_both():
    model = tiny_vit()
    with pytest.raises(ValueError, match=r"30x32.*patch size 4"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"18x18.*patch size 4"):
        tiny_vit(img_size=18)


def test_rectangular_images_run():
    for scheme in SCHEMES:
        model = tiny_vit(scheme=scheme, img_size=(16, 24))
        assert model(torch.randn(1, 3, 16, 24)).shape == (1, 7)
        assert model(torch.randn(1, 3, 24, 12)).shape == (1, 7)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(embed_dim=30, num_heads=4), "embed_dim 30 is not divisible by num_heads 4"),
        (dict(scheme="sincos_2d", embed_dim=30, num_heads=6), "sincos_2d needs embed_dim divisible by 4, got 30"),
        (dict(scheme="rope_2d", embed_dim=48, num_heads=8), "head width .* divisible by 4, got 6"),
        (dict(pool="avg"), "pool must be one of cls, gap, seq"),
        (dict(depth="3"), "depth must be a positive integer"),
        (dict(patch_embed="conv_stem", patch_size=6, img_size=12), "power of 2"),
        (dict(patch_embed="conv_tokenizer", patch_size=6, img_size=12), "conv_tokenizer needs .* power of 2"),
    ],
)
def test_bad_values_raise_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_vit(**kwargs)


def test_no_weight_decay_names_tables_tokens_norms_and_biases():
    for scheme in SCHEMES:
        model = tiny_vit("linear", "cls", scheme)
        names = model.no_weight_decay()
        params = dict(model.named_parameters())
        assert names <= params.keys()
        assert "cls_token" in names
        assert {n for n in params if n.startswith("pos_embed.")} <= names
        assert {n for n, p in params.items() if p.ndim == 1} <= names  # norms and biases
        decayed = params.keys() - names
        assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed
        assert all(params[n].ndim >= 2 for n in decayed)
    assert "pos_embed.table" in tiny_vit(scheme="learned_1d").no_weight_decay()
    assert {"pos_embed.offset_table", "pos_embed.class_table"} <= tiny_vit(scheme="relative_bias").no_weight_decay()


def test_sequence_pooling_is_a_softmax_weighted_mean_of_the_normed_tokens():
    model = perturb_(tiny_vit(pool="seq")).double().eval()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    normed = model.norm(model.forward_features(images))  # (2, 16, 32)
    with torch.no_grad():
        model.seq_score.weight.zero_()
        model.seq_score.bias.zero_()
    torch.testing.assert_close(model(images), model.head(normed.mean(dim=1)))  # equal scores: the plain mean
    with torch.no_grad():  # a score that grows with the first channel: the tokens it favours dominate
        model.seq_score.weight[0, 0] = 1e4
    favoured = normed[torch.arange(2), normed[..., 0].argmax(dim=1)]
    torch.testing.assert_close(model(images), model.head(favoured))
    assert model.seq_score.weight.requires_grad and "seq_score.weight" not in model.no_weight_decay()


def test_stochastic_depth_grows_linearly_over_depth():
    model = tiny_vit(depth=5, drop_path_rate=0.2)
    rates = [getattr(block.drop_path, "drop_prob", 0.0) for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_bf16_autocast_runs_and_stays_close_to_fp32(scheme):
    # the attention bias and the rotation must follow the queries into bf16
    model = perturb_(tiny_vit("conv", "cls", scheme)).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(images)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(images), rtol=0, atol=0.05)


# a graph break lives in one part's code: every scheme with each pool, every patch embedding with each pool
COMPILE_CASES = sorted(  # seq differs from gap only in the head: one patch embedding is enough for a scheme
    {("conv", pool, s) for pool in ("cls", "gap") for s in SCHEMES}
    | {(p, pool, "learned_1d") for pool in POOLS for p in PATCH_EMBEDS}
)


@pytest.mark.parametrize("patch_embed,pool,scheme", COMPILE_CASES)
def test_torch_compile_sees_one_graph_without_breaks(patch_embed, pool, scheme):
    # a graph break splits the compiled step and costs speed on a GPU; the positional hooks
    # (partials and closures handed to every block) must trace straight through. The one break
    # on purpose: on a CPU the CCT tokenizer runs outside the graph (compiled max-pool is slow)
    torch._dynamo.reset()
    model = tiny_vit(patch_embed, pool, scheme, drop_path_rate=0.1)  # training mode, drop path on
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 16, 16))
    expected = (2, 1) if patch_embed == "conv_tokenizer" else (1, 0)
    assert (explained.graph_count, explained.graph_break_count) == expected, explained.break_reasons


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_mean_attention_distance_follows_the_models_own_forward(scheme):
    from vit.studies.attention_distance import attention_weights, mean_attention_distance

    model = perturb_(tiny_vit("conv", "cls", scheme)).double().eval()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    distances = mean_attention_distance(model, images)
    assert distances.shape == (2, 4)  # blocks, heads
    # between the nearest (0) and the farthest (12*sqrt(2) px apart on a 4x4 grid of 4 px patches)
    assert (distances > 0).all() and (distances < 12 * 2**0.5).all()
    # the recomputed weights give what the fused kernel gives: the block's attention output
    block = model.blocks[0]
    grid = (4, 4)
    x = model.pos_embed.add_to_tokens(
        torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(images)], 1), grid
    )
    hook = (model.pos_embed.attention_hooks(grid) or [None])[0]
    h = block.norm1(x)
    v = rearrange(block.attn.qkv(h), "b n (qkv h d) -> qkv b h n d", qkv=3, h=4)[2]
    by_hand = block.attn.proj(rearrange(attention_weights(block.attn, h, hook).double() @ v, "b h n d -> b n (h d)"))
    torch.testing.assert_close(by_hand, block.attn(h, hook))


def test_a_head_that_attends_to_itself_has_distance_zero_and_uniform_heads_the_mean_distance():
    from vit.studies.attention_distance import mean_attention_distance

    model = tiny_vit("conv", "gap", "alibi_2d").double().eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.zero_()  # every score 0: only alibi's -slope*distance bias is left
            block.attn.qkv.bias.zero_()
        model.pos_embed.cached_bias.mul_(1e6)  # a bias so steep that each patch attends to itself only
    assert torch.allclose(
        mean_attention_distance(model, torch.randn(1, 3, 16, 16, dtype=torch.float64)), torch.zeros(2, 4), atol=1e-6
    )
    uniform = tiny_vit("conv", "gap", "none").double().eval()
    with torch.no_grad():
        for block in uniform.blocks:
            block.attn.qkv.weight.zero_()
            block.attn.qkv.bias.zero_()
    centres = torch.cartesian_prod(torch.arange(4.0), torch.arange(4.0)) * 4
    expected = torch.cdist(centres, centres).mean().item()  # uniform weights: the mean distance on the grid
    torch.testing.assert_close(
        mean_attention_distance(uniform, torch.randn(1, 3, 16, 16, dtype=torch.float64)),
        torch.full((2, 4), expected),
    )
