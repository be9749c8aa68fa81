"""Evaluate a trained checkpoint the ways the ablation compares schemes:

- validation accuracy at the training resolution;
- at other resolutions with no fine-tuning (the validation images resized, each scheme
  resizing itself the way the model does: resampled table, recomputed angles or index);
- with the patch tokens of every image shuffled (after the patch embedding): a model
  without positions is unaffected, a model that uses positions drops;
- the mean attention distance of every head of every block (on the first images).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from vit.training.checkpoint import load_checkpoint
from vit.training.data.augment import normalize
from vit.training.hits import hits
from vit.training.tta import scores

RESOLUTION_FACTORS = (0.75, 1.25, 1.5, 2.0)


def shuffle_patches(images: Tensor, patch: int, generator: torch.Generator) -> Tensor:
    """Move the patches of each image to a random permutation of the grid positions."""
    b, _, h, w = images.shape
    patches = rearrange(images, "b c (h p1) (w p2) -> b (h w) c p1 p2", p1=patch, p2=patch)
    order = torch.rand(b, patches.shape[1], generator=generator).argsort(dim=1).to(images.device)
    patches = patches[torch.arange(b, device=images.device)[:, None], order]
    return rearrange(patches, "b (h w) c p1 p2 -> b c (h p1) (w p2)", h=h // patch)


def default_resolutions(img_size: int, patch: int) -> list[int]:
    """0.75x to 2x the training size, rounded to whole patches (32 px, patch 4: 24, 40, 48, 64)."""
    sizes = {max(patch, round(f * img_size / patch) * patch) for f in RESOLUTION_FACTORS}
    return sorted(sizes - {img_size})


@contextmanager
def shuffled_tokens(model, generator: torch.Generator) -> Iterator[None]:
    """Inside, every image's patch tokens move to a random permutation of the grid positions
    right after the patch embedding. For a patch-wise embedding that is shuffling the image's
    patches (the same draws give the same result as `shuffle_patches`); for a convolutional
    tokenizer, whose windows straddle patch borders, it is the only shuffle that leaves the
    tokens themselves whole, so it tests position alone."""

    def permute(module, inputs, tokens):
        b, n, _ = tokens.shape
        order = torch.rand(b, n, generator=generator).argsort(dim=1).to(tokens.device)
        return tokens[torch.arange(b, device=tokens.device)[:, None], order]

    handle = model.patch_embed.register_forward_hook(permute)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def accuracy(
    model, batches, mean, std, size: int | None = None, shuffle: bool = False, autocast=nullcontext, tta: str = "none"
) -> float:
    """Top-1 accuracy (percent) over the validation batches, optionally resized or shuffled,
    under `autocast` (the precision the run trained and evaluated in) and with the test-time
    augmentation `tta` (vit/training/tta.py); `shuffle`: with the patch tokens shuffled
    (`shuffled_tokens`)."""
    generator = torch.Generator().manual_seed(0)
    net = model if size is None else Resized(model, size)
    correct, total = torch.zeros((), dtype=torch.long, device=mean.device), 0
    for images, labels in batches:
        with shuffled_tokens(model, generator) if shuffle else nullcontext():
            correct += hits(scores(net, images, mean, std, autocast, tta), labels)[0].sum()  # no sync per batch
        total += len(labels)
    return 100 * correct.item() / total


class Resized(torch.nn.Module):
    """The model, fed its normalised images resized to size x size."""

    def __init__(self, model, size: int):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.model(x)


@torch.no_grad()
def attention_distance(model, batches, mean, std, images: int = 512) -> Tensor:
    """(depth, heads) mean attention distance in pixels over the first `images` images."""
    from vit.studies.attention_distance import mean_attention_distance

    sums, seen = None, 0
    for batch, _ in batches:
        batch = batch[: images - seen]
        result = mean_attention_distance(model, normalize(batch, mean, std)) * len(batch)
        sums, seen = result if sums is None else sums + result, seen + len(batch)
        if seen >= images:
            break
    return sums / seen


def model_from_checkpoint(path: str | Path) -> tuple[torch.nn.Module, DictConfig, int]:
    """The trained model of a checkpoint, rebuilt from the config stored in it; that config;
    and the number of epochs it had trained."""
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    model = hydra.utils.instantiate(cfg.model)
    model.load_state_dict(state["model"])
    return model, cfg, state["epoch"]


def evaluate_checkpoint(
    path: str | Path,
    resolutions: list[int] | None = None,
    device: str = "cpu",
    data_overrides: dict | None = None,
    precision: str = "trained",
    tta: str = "trained",
) -> dict:
    """Rebuild the model and data of a checkpoint from its own config and measure it, in the
    run's own precision on this device (`trained`: so acc1 is what training logged on the same
    kind of device) or in the one given (bf16, fp16, fp32), and with the run's own test-time
    augmentation (`trained`) or the one given (none, flip, flip_shift)."""
    from vit.training import precision as amp

    model, cfg, epoch = model_from_checkpoint(path)
    tta = cfg.trainer.get("tta", "none") if tta == "trained" else tta
    dtype = amp.choose_precision(cfg.trainer.precision if precision == "trained" else precision, torch.device(device))
    autocast = partial(amp.autocast, torch.device(device), dtype)
    for key, value in (data_overrides or {}).items():
        OmegaConf.update(cfg, f"data.{key}", value)
    model.to(device).eval()
    data = hydra.utils.instantiate(cfg.data)
    _, val = data.loaders(torch.device(device), 0, 1, cfg.seed)
    mean, std = torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device)
    size, patch = data.img_size, model.patch_size
    if resolutions is None:
        resolutions = default_resolutions(size, patch)
    measure = partial(accuracy, model, val, mean, std, autocast=autocast, tta=tta)
    return {
        "checkpoint": str(path),
        "epoch": epoch,
        "img_size": size,
        "precision": amp.precision_name(dtype),
        "tta": tta,
        "acc1": measure(),
        "acc1_at": {str(r): measure(size=r) for r in resolutions},
        "shuffled_acc1": measure(shuffle=True),
        "attention_distance_px": attention_distance(model, val, mean, std).tolist(),
        "params": sum(p.numel() for p in model.parameters()),
        "pos_embed_params": sum(p.numel() for p in model.pos_embed.parameters()),
    }
