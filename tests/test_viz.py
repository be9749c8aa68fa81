import math

import torch

from vit.model.pos_embed.sincos_2d import SinCos2d
from vit.training.similarity_image import similarity_figure, similarity_mosaic


def test_similarity_mosaic_puts_each_positions_map_in_its_tile():
    grid = (3, 4)
    table = torch.randn(12, 16)
    mosaic = similarity_mosaic(table, grid)
    assert mosaic.shape == (3 * 4, 4 * 5)
    unit = torch.nn.functional.normalize(table, dim=-1)
    for r in range(3):
        for c in range(4):
            tile = mosaic[r * 4 : r * 4 + 3, c * 5 : c * 5 + 4]
            torch.testing.assert_close(tile.flatten(), unit @ unit[r * 4 + c])
            assert math.isclose(tile[r, c].item(), 1.0, abs_tol=1e-6)
    assert mosaic[3].isnan().all() and mosaic[:, 4].isnan().all()  # gaps between tiles


def test_similarity_figure_renders():
    scheme = SinCos2d(dim=32, num_heads=2, depth=1, grid_size=(4, 4), num_prefix_tokens=1)
    fig = similarity_figure(scheme.position_table((4, 4)), (4, 4))
    assert len(fig.axes) == 2  # the mosaic and its colour bar
