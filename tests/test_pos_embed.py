"""Each positional scheme does what its paper says, at the training grid and at others."""

import itertools
import math

import pytest
import torch

from conftest import tiny_vit
from vit.errors import ConfigError
from vit.model.pos_embed.alibi_2d import Alibi2d
from vit.model.pos_embed.cpe import ConditionalPosition
from vit.model.pos_embed.learned_1d import Learned1d
from vit.model.pos_embed.relative_bias import RelativeBias
from vit.model.pos_embed.rope_2d import Rope2d, rotate
from vit.model.pos_embed.rope_mixed import RopeMixed
from vit.model.pos_embed.sincos_1d import SinCos1d
from vit.model.pos_embed.sincos_2d import SinCos2d


def scheme(cls, grid=(3, 4), prefix=1, dim=32, heads=2, depth=2, **kwargs):
    return cls(dim=dim, num_heads=heads, depth=depth, grid_size=grid, num_prefix_tokens=prefix, **kwargs)


def offset_pairs(grid):
    """All (query, key) patch index pairs with their (row, col) offset."""
    cells = list(itertools.product(range(grid[0]), range(grid[1])))
    for (i, (ri, ci)), (j, (rj, cj)) in itertools.product(enumerate(cells), repeat=2):
        yield i, j, (ri - rj, ci - cj)


def assert_depends_only_on_offset(values, grid, first=0):
    """values[..., first + i, first + j] is the same for every pair with the same offset."""
    seen = {}
    for i, j, offset in offset_pairs(grid):
        v = values[..., first + i, first + j]
        if offset in seen:
            torch.testing.assert_close(v, seen[offset], rtol=0, atol=1e-5)
        else:
            seen[offset] = v
    return seen


# sincos_2d


def test_sincos_matches_its_formula_element_by_element():
    dim, grid = 16, (3, 4)
    pe = scheme(SinCos2d, grid=grid, dim=dim).embedding(grid)
    assert pe.shape == (1 + 12, dim)
    assert torch.equal(pe[0], torch.zeros(dim))  # nothing added to the class token
    quarter = dim // 4
    for r, c, k in itertools.product(range(grid[0]), range(grid[1]), range(quarter)):
        w = 1 / 10000 ** (k / quarter)
        row = pe[1 + r * grid[1] + c]
        expected = [math.sin(r * w), math.cos(r * w), math.sin(c * w), math.cos(c * w)]
        actual = [row[k], row[quarter + k], row[2 * quarter + k], row[3 * quarter + k]]
        assert actual == pytest.approx(expected, abs=1e-6)


def test_sincos_is_not_trainable_and_not_saved():
    model = tiny_vit(scheme="sincos_2d")
    assert list(model.pos_embed.parameters()) == []
    assert not any(k.startswith("pos_embed.") for k in model.state_dict())


def test_sincos_is_recomputed_for_a_new_grid():
    s = scheme(SinCos2d, grid=(3, 4), prefix=0)
    tokens = torch.zeros(1, 6 * 5, 32)
    added = s.add_to_tokens(tokens, (6, 5))[0]
    torch.testing.assert_close(added, scheme(SinCos2d, grid=(6, 5), prefix=0).embedding((6, 5)))
    # the entries of the old grid's positions are unchanged: (row 2, col 3) is the same vector
    torch.testing.assert_close(added[2 * 5 + 3], s.embedding((3, 4))[2 * 4 + 3])


# sincos_1d


def test_sincos_1d_matches_the_transformers_formula_in_raster_order():
    dim, grid = 16, (3, 4)
    pe = scheme(SinCos1d, grid=grid, dim=dim).embedding(grid)
    assert pe.shape == (1 + 12, dim)
    assert torch.equal(pe[0], torch.zeros(dim))  # nothing added to the class token
    half = dim // 2
    for r, c, k in itertools.product(range(grid[0]), range(grid[1]), range(half)):
        p, w = r * grid[1] + c, 1 / 10000 ** (k / half)
        row = pe[1 + p]
        assert [row[k], row[half + k]] == pytest.approx([math.sin(p * w), math.cos(p * w)], abs=1e-5)


def test_sincos_1d_dot_products_depend_only_on_the_sequence_offset():
    pe = scheme(SinCos1d, grid=(4, 5), prefix=0, dim=32).embedding((4, 5)).double()
    gram = pe @ pe.T
    for offset in range(-19, 20):
        torch.testing.assert_close(gram.diagonal(offset), gram.diagonal(offset)[:1].expand(20 - abs(offset)))
    assert gram.diagonal(1)[0] != gram.diagonal(5)[0]  # one step right is not one row down


def test_sincos_1d_on_a_new_grid_counts_positions_in_the_new_raster_order():
    s = scheme(SinCos1d, grid=(3, 4), prefix=0)
    added = s.add_to_tokens(torch.zeros(1, 6 * 5, 32), (6, 5))[0]
    torch.testing.assert_close(added[:12], s.embedding((3, 4)))  # the first 12 positions are shared
    # (row 1, col 0) is position 5 on the new grid, where it was 4: a 1D scheme knows no rows
    torch.testing.assert_close(added[5], s.embedding((3, 4))[5])
    assert not torch.allclose(added[5], s.embedding((3, 4))[4])


def test_sincos_1d_is_not_trainable_and_not_saved():
    model = tiny_vit(scheme="sincos_1d")
    assert list(model.pos_embed.parameters()) == []
    assert not any(k.startswith("pos_embed.") for k in model.state_dict())


# learned_1d


def test_learned_table_has_one_trainable_row_per_token():
    s = scheme(Learned1d, grid=(3, 4), prefix=1)
    assert s.table.shape == (1, 13, 32) and s.table.requires_grad
    assert 0.015 < s.table.std().item() < 0.025 and s.table.abs().max() <= 2.0  # trunc normal, std 0.02


def test_learned_table_resamples_patches_and_keeps_the_class_row():
    s = scheme(Learned1d, grid=(4, 4), prefix=1)
    with torch.no_grad():
        s.table[:, 1:] = 0.5  # a constant patch table stays constant under bicubic resampling
    table = s.table_for((6, 2))
    assert table.shape == (1, 1 + 12, 32)
    assert torch.equal(table[:, 0], s.table[:, 0])
    torch.testing.assert_close(table[:, 1:], torch.full((1, 12, 32), 0.5))
    assert s.table_for((4, 4)) is s.table


def test_learned_table_from_another_grid_is_resampled_on_load():
    small, large = scheme(Learned1d, grid=(2, 2)), scheme(Learned1d, grid=(4, 4))
    small.load_state_dict(large.state_dict())
    torch.testing.assert_close(small.table, large.table_for((2, 2)))


# relative_bias


def randomised_relative(grid=(3, 4), prefix=1):
    s = scheme(RelativeBias, grid=grid, prefix=prefix)
    with torch.no_grad():
        for p in s.parameters():
            p.normal_()
    return s


def test_relative_table_has_the_swin_and_beit_shapes():
    s = scheme(RelativeBias, grid=(3, 4), prefix=1, heads=2, depth=5)
    assert s.offset_table.shape == (5, 2, 5, 7)  # (2Gh-1) x (2Gw-1) per block and head
    assert s.class_table.shape == (5, 2, 3)
    assert scheme(RelativeBias, prefix=0).class_table is None
    assert torch.count_nonzero(s.bias((3, 4))) == 0  # zero init: starts as no positions


def test_relative_bias_depends_only_on_the_2d_offset():
    grid = (3, 4)
    s = randomised_relative(grid)
    bias = s.bias(grid)  # (depth, heads, 1 + N, 1 + N)
    assert bias.shape == (2, 2, 13, 13)
    by_offset = assert_depends_only_on_offset(bias, grid, first=1)
    for (dr, dc), value in by_offset.items():
        assert torch.equal(value, s.offset_table[:, :, dr + 2, dc + 3])
    assert len(by_offset) == 5 * 7
    # BEiT's three class-token entries
    assert torch.equal(bias[:, :, 0, 1:], s.class_table[:, :, 0:1].expand(-1, -1, 12))
    assert torch.equal(bias[:, :, 1:, 0], s.class_table[:, :, 1:2].expand(-1, -1, 12))
    assert torch.equal(bias[:, :, 0, 0], s.class_table[:, :, 2])


def test_relative_bias_on_a_smaller_grid_reads_the_same_offsets():
    s = randomised_relative((4, 4), prefix=0)
    small = assert_depends_only_on_offset(s.bias((2, 3)), (2, 3))
    full = assert_depends_only_on_offset(s.bias((4, 4)), (4, 4))
    for offset, value in small.items():
        assert torch.equal(value, full[offset])


def test_relative_bias_on_a_larger_grid_interpolates_the_table():
    s = randomised_relative((3, 3), prefix=1)
    bias = s.bias((5, 3))  # rows outgrow the table: 2*5-1 row offsets are needed
    assert bias.shape == (2, 2, 16, 16)
    assert len(assert_depends_only_on_offset(bias, (5, 3), first=1)) == 9 * 5
    # a constant table stays constant when resampled, and the class entries stay apart
    with torch.no_grad():
        s.offset_table.fill_(0.7)
    bias = s.bias((5, 3))
    torch.testing.assert_close(bias[:, :, 1:, 1:], torch.full((2, 2, 15, 15), 0.7))
    assert torch.equal(bias[:, :, 0, 0], s.class_table[:, :, 2])


def test_relative_table_from_another_grid_is_resampled_on_load():
    small, large = scheme(RelativeBias, grid=(2, 2)), randomised_relative((4, 4))
    small.load_state_dict(large.state_dict())
    assert small.offset_table.shape == (2, 2, 3, 3)
    torch.testing.assert_close(small.class_table, large.class_table)


# rope_2d


def rotated_scores(s, grid):
    """Scores between one fixed query and one fixed key placed at every token."""
    cos, sin = s.angles(grid)
    n = cos.shape[0]
    q = torch.randn(s.head_dim, dtype=torch.float64).expand(1, 1, n, -1)
    k = torch.randn(s.head_dim, dtype=torch.float64).expand(1, 1, n, -1)
    q_rot, k_rot = rotate(q, cos.double(), sin.double()), rotate(k, cos.double(), sin.double())
    return q, k, q_rot, k_rot, (q_rot @ k_rot.transpose(-1, -2))[0, 0]


@pytest.mark.parametrize("grid", [(3, 4), (6, 5)])
def test_rope_scores_depend_only_on_the_2d_offset(grid):
    s = scheme(Rope2d, grid=(3, 4), dim=64, heads=4)  # head width 16: 4 row pairs, 4 column pairs
    q, k, q_rot, k_rot, scores = rotated_scores(s, grid)
    by_offset = assert_depends_only_on_offset(scores, grid, first=1)
    assert len({round(v.item(), 6) for v in by_offset.values()}) > len(by_offset) // 2  # not constant
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))  # a rotation
    assert torch.equal(q_rot[..., 0, :], q[..., 0, :])  # class token unrotated


def test_rope_rotates_pairs_by_row_then_column_frequencies():
    s = scheme(Rope2d, grid=(3, 4), prefix=0, dim=32, heads=2, theta=100.0)  # head width 16
    cos, _ = s.angles((3, 4))
    omega = 100.0 ** -(torch.arange(4) * 4 / 16)
    r, c = 2, 3
    expected = torch.cat([r * omega, c * omega]).cos()
    torch.testing.assert_close(cos[r * 4 + c], torch.cat([expected, expected]))
    assert list(s.parameters()) == []


# rope_mixed


def test_rope_mixed_with_axial_frequencies_is_rope_2d_exactly():
    axial = scheme(Rope2d, grid=(3, 4), dim=64, heads=4, theta=100.0)  # head width 16
    mixed = scheme(RopeMixed, grid=(3, 4), dim=64, heads=4)
    omega = 100.0 ** -(torch.arange(4) * 4 / 16)
    with torch.no_grad():
        mixed.freqs.zero_()
        mixed.freqs[..., :4, 0] = omega  # the first quarter of the pairs follows rows,
        mixed.freqs[..., 4:, 1] = omega  # the second quarter columns
    q, k = torch.randn(2, 2, 4, 13, 16).unbind(0)
    for grid in [(3, 4), (5, 2)]:
        for hook_a, hook_m in zip(axial.attention_hooks(grid), mixed.attention_hooks(grid), strict=True):
            qa, ka, _ = hook_a(q[..., : 1 + grid[0] * grid[1], :], k[..., : 1 + grid[0] * grid[1], :])
            qm, km, _ = hook_m(q[..., : 1 + grid[0] * grid[1], :], k[..., : 1 + grid[0] * grid[1], :])
            assert torch.equal(qa, qm) and torch.equal(ka, km)


def test_rope_mixed_starts_as_the_paper_does_and_learns_per_block_and_head():
    s = scheme(RopeMixed, grid=(3, 4), dim=64, heads=4, depth=3)  # head width 16: 8 pairs
    assert s.freqs.shape == (3, 4, 8, 2) and s.freqs.requires_grad
    magnitude = 10.0 ** -(torch.arange(4) * 4 / 16)
    norms = s.freqs.norm(dim=-1)
    torch.testing.assert_close(norms, torch.cat([magnitude, magnitude]).expand(3, 4, 8))
    direction = torch.atan2(s.freqs[..., 0], s.freqs[..., 1])  # angle of (fx, fy)
    first, second = direction[..., :4], direction[..., 4:]
    torch.testing.assert_close(first, first[..., :1].expand_as(first))  # one direction per head,
    turn = torch.remainder(second - first, 2 * math.pi)
    torch.testing.assert_close(turn, torch.full_like(turn, math.pi / 2))  # the other quarter at 90 degrees
    assert len({round(d, 4) for d in first[..., 0].flatten().tolist()}) == 12  # random per block and head


@pytest.mark.parametrize("grid", [(3, 4), (6, 5)])
def test_rope_mixed_scores_depend_only_on_the_2d_offset(grid):
    s = scheme(RopeMixed, grid=(3, 4), dim=64, heads=4)
    n = 1 + grid[0] * grid[1]
    q = torch.randn(16, dtype=torch.float64).expand(1, 4, n, -1)
    k = torch.randn(16, dtype=torch.float64).expand(1, 4, n, -1)
    q_rot, k_rot, bias = s.attention_hooks(grid)[1](q, k)
    assert bias is None
    scores = (q_rot @ k_rot.transpose(-1, -2))[0]
    assert_depends_only_on_offset(scores, grid, first=1)
    assert torch.equal(q_rot[..., 0, :], q[..., 0, :])  # class token unrotated


# cpe


def test_cpe_mixes_neighbours_after_the_first_block_and_leaves_the_class_token():
    s = scheme(ConditionalPosition, grid=(3, 4), dim=8)
    assert sum(p.numel() for p in s.parameters()) == 10 * 8  # a 3x3 kernel and a bias per channel
    x = torch.randn(2, 1 + 12, 8)
    assert torch.equal(s.after_block(x, (3, 4), 1), x)  # only after block 0
    out = s.after_block(x, (3, 4), 0)
    assert torch.equal(out[:, 0], x[:, 0])
    patch = x[:, 1:].reshape(2, 3, 4, 8)
    r, c = 1, 2  # an interior patch: its 3x3 neighbourhood through the depthwise kernel, plus itself
    window = patch[:, r - 1 : r + 2, c - 1 : c + 2]  # (B, 3, 3, D)
    peg = s.pegs["0"]
    kernel = peg.weight[:, 0].permute(1, 2, 0)  # (3, 3, D)
    expected = patch[:, r, c] + (window * kernel).sum(dim=(1, 2)) + peg.bias
    torch.testing.assert_close(out[:, 1 + r * 4 + c], expected)


def test_cpe_tells_border_from_interior_and_runs_on_any_grid():
    s = scheme(ConditionalPosition, grid=(3, 4), prefix=0, dim=8)
    same = torch.ones(1, 5 * 6, 8)  # every patch alike: only the zero padding can tell them apart
    out = s.after_block(same, (5, 6), 0).reshape(5, 6, 8)
    assert not torch.allclose(out[0, 0], out[2, 2]) and torch.allclose(out[2, 2], out[2, 3])


def test_cpe_after_several_blocks_mixes_after_each_with_its_own_kernel():
    s = scheme(ConditionalPosition, grid=(3, 4), dim=8, depth=3, after=[0, 2])
    assert sum(p.numel() for p in s.parameters()) == 2 * 10 * 8
    x = torch.randn(2, 1 + 12, 8)
    assert torch.equal(s.after_block(x, (3, 4), 1), x)
    after_0, after_2 = s.after_block(x, (3, 4), 0), s.after_block(x, (3, 4), 2)
    assert not torch.equal(after_0, x) and not torch.allclose(after_0, after_2)  # two kernels, two results
    with pytest.raises(ConfigError, match="after must name distinct blocks between 0 and"):
        scheme(ConditionalPosition, grid=(3, 4), dim=8, after=[0, 0])


def test_cpe_loads_a_checkpoint_from_before_it_had_several_pegs():
    s = scheme(ConditionalPosition, grid=(3, 4), dim=8)
    old = {"peg.weight": torch.randn(8, 1, 3, 3), "peg.bias": torch.randn(8)}  # its one PEG, as saved then
    s.load_state_dict(old)
    assert torch.equal(s.pegs["0"].weight, old["peg.weight"]) and torch.equal(s.pegs["0"].bias, old["peg.bias"])


# alibi_2d


def test_alibi_2d_is_minus_slope_times_distance_with_alibis_slopes():
    s = scheme(Alibi2d, grid=(3, 4), dim=32, heads=4)
    assert list(s.parameters()) == []
    bias = s.attention_hooks((3, 4))[0](torch.zeros(1, 4, 13, 8), torch.zeros(1, 4, 13, 8))[2]
    slopes = torch.tensor([2**-2, 2**-4, 2**-6, 2**-8])  # 2^(-8h/H), H = 4
    for i, j, (dr, dc) in offset_pairs((3, 4)):
        torch.testing.assert_close(bias[:, 1 + i, 1 + j], -slopes * math.hypot(dr, dc))
    assert not bias[:, 0].any() and not bias[:, :, 0].any()  # the class token: no bias
    larger = s.attention_hooks((5, 6))[0](torch.zeros(1, 4, 31, 8), torch.zeros(1, 4, 31, 8))[2]
    torch.testing.assert_close(larger[:, 1, 30], -slopes * math.hypot(4, 5))  # recomputed, not resampled
