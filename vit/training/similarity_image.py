"""How similar each patch position's embedding is to every other (ViT paper, Fig. 7): the image
the trainer logs to TensorBoard, and the mosaic the studies' figures reuse."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402


def similarity_mosaic(table: Tensor, grid: tuple[int, int]) -> Tensor:
    """(Gh*Gw, D) position vectors -> one (Gh*(Gh+1), Gw*(Gw+1)) image: tile (r, c) holds the
    cosine similarity of position (r, c) to every position, tiles split by NaN gaps."""
    gh, gw = grid
    unit = F.normalize(table.detach().float().cpu(), dim=-1)
    sim = (unit @ unit.T).reshape(gh, gw, gh, gw)
    mosaic = torch.full((gh, gh + 1, gw, gw + 1), float("nan"))
    mosaic[:, :gh, :, :gw] = sim.permute(0, 2, 1, 3)
    return mosaic.reshape(gh * (gh + 1), gw * (gw + 1))


def similarity_figure(table: Tensor, grid: tuple[int, int], title: str = "") -> plt.Figure:
    mosaic = similarity_mosaic(table, grid)
    fig, ax = plt.subplots(figsize=(5, 5 * grid[0] / grid[1] + 0.4))
    # colour range from the lowest similarity up to 1, so that fixed tables with mostly
    # positive similarities (sin-cos) still show their structure
    image = ax.imshow(mosaic.numpy(), vmin=float(mosaic.nan_to_num(1.0).min()), vmax=1, cmap="viridis")
    ax.set_axis_off()
    ax.set_title(title or "cosine similarity of position embeddings", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
