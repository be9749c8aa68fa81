"""Describe the model a config builds: its parts, parameters and FLOPs. Writes no files.

    python scripts/describe.py model=vit_small model/pos_embed=rope_2d model.pool=gap
    python scripts/describe.py -m model/pos_embed=none,learned_1d,rope_2d,rope_mixed,cpe,alibi_2d

It takes the same overrides as scripts/train.py.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from vit.cli import ConfigError, check_config, exit_on, without_data
from vit.errors import TrainingError
from vit.instantiate import build_model


@hydra.main(config_path="../configs", config_name="describe", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_on({ConfigError: 2}, lambda: check_config(cfg))  # before torch: a bad value is answered at once
    import torch

    from vit.studies.attention_kernel import attention_kernels
    from vit.studies.benchmark import forward_flops
    from vit.studies.op_count import step_ops
    from vit.training import precision
    from vit.training.device import choose_device

    cfg = exit_on({ConfigError: 2}, lambda: without_data(cfg))
    model = exit_on({ConfigError: 2}, lambda: build_model(cfg))
    choices = HydraConfig.get().runtime.choices
    h, w = model.img_size
    grid = model.grid_for(h, w)
    tokens = grid[0] * grid[1] + (model.pool == "cls")
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    parts = {"cls_token": model.cls_token.numel() if model.cls_token is not None else 0, **parts}
    flops = forward_flops(model.eval(), torch.zeros(1, cfg.model.in_chans, h, w))

    print(
        f"model       {choices['model']}: patch_embed={choices['model/patch_embed']}, "
        f"pos_embed={choices['model/pos_embed']}, pool={model.pool}"
    )
    print(
        f"input       {cfg.model.in_chans}x{h}x{w} -> {grid[0]}x{grid[1]} patches of {model.patch_size} px, "
        f"{tokens} tokens"
    )
    print(f"parameters  {sum(parts.values()):,}")
    for name, count in parts.items():
        if count:
            print(f"  {name:<12}{count:>12,}")
    print(f"forward     {flops / 1e9:.3f} GFLOPs per image (2 per multiply-add)")
    device = exit_on({TrainingError: 2}, lambda: choose_device(cfg.trainer.device))
    dtype = exit_on({ConfigError: 2}, lambda: precision.choose_precision(cfg.trainer.precision, device))
    x = torch.zeros(2, cfg.model.in_chans, h, w, device=device)
    kernel = attention_kernels(model.to(device), x, lambda: precision.autocast(device, dtype))
    print(f"attention   {kernel} kernel on {device} in {precision.precision_name(dtype)} (training)")
    ops, views = step_ops(model, x, cfg.model.num_classes, lambda: precision.autocast(device, dtype))
    print(f"step        {ops:,} operators dispatched per eager training step here, {ops - views:,} of them not views")


if __name__ == "__main__":
    main()
