"""Benchmark our ViT against timm's with the same configuration, and every positional scheme
and patch embedding against learned_1d + conv: training and inference images/s, the peak
memory of a training step, FLOPs per image and (on H100/H200) model FLOPs utilisation.

    python scripts/benchmark.py                                   # the CIFAR preset, batch 128
    python scripts/benchmark.py model=vit_small data=imagefolder benchmark.batch_size=256
    python scripts/benchmark.py trainer.precision=fp32 benchmark.compile=false

CPU runs in fp32, CUDA in the trainer's precision (bf16 by default), with and without
torch.compile. Prints a markdown table; writes the same figures as JSON to
outputs/benchmarks/.
"""

import json
import platform
import time
from functools import partial
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vit import registry
from vit.cli import ConfigError, check_config, exit_on, instantiate_group


def ours(cfg: DictConfig, scheme: str, patch_embed: str):
    """Our model as configured, with another scheme or patch embedding swapped in."""
    swapped = OmegaConf.to_container(cfg.model, resolve=True)
    for group, option in (("pos_embed", scheme), ("patch_embed", patch_embed)):
        swapped[group] = OmegaConf.to_container(OmegaConf.load(registry.CONFIGS / "model" / group / f"{option}.yaml"))
    return partial(instantiate_group, OmegaConf.create({"model": swapped}), "model")


def variants(cfg: DictConfig, compiled_options: list[bool]) -> list:
    from vit.studies.benchmark import Variant, timm_equivalent

    choices = HydraConfig.get().runtime.choices
    scheme, patch = choices["model/pos_embed"], choices["model/patch_embed"]
    out = []
    for compiled in compiled_options:
        tag = " +compile" if compiled else ""
        out.append(Variant(f"ours learned_1d conv{tag}", ours(cfg, "learned_1d", "conv"), compiled=compiled))
        out.append(Variant(f"timm learned_1d conv{tag}", partial(timm_equivalent, cfg), compiled=compiled))
        if cfg.benchmark.compare:
            out += [
                Variant(f"ours {s} conv{tag}", ours(cfg, s, "conv"), s, "conv", compiled)
                for s in registry.schemes()
                if s != "learned_1d"
            ]
            out += [
                Variant(f"ours learned_1d {p}{tag}", ours(cfg, "learned_1d", p), "learned_1d", p, compiled)
                for p in registry.patch_embeds()
                if p != "conv"
            ]
        elif (scheme, patch) != ("learned_1d", "conv"):
            out.append(Variant(f"ours {scheme} {patch}{tag}", ours(cfg, scheme, patch), scheme, patch, compiled))
    return out


@hydra.main(config_path="../configs", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_on({ConfigError: 2}, lambda: check_config(cfg))  # before torch: a bad value is answered at once
    import torch

    from vit.errors import TrainingError
    from vit.studies.benchmark import markdown, results, run
    from vit.training.trainer import choose_device, choose_precision

    b = cfg.benchmark
    device = exit_on({TrainingError: 2}, lambda: choose_device(cfg.trainer.device))
    amp = exit_on({ConfigError: 2}, lambda: choose_precision(cfg.trainer.precision, device))
    compiled = {"auto": [False, True] if device.type == "cuda" else [False], True: [True], False: [False]}[b.compile]
    chosen = variants(cfg, compiled)
    exit_on({ConfigError: 2}, lambda: [v.build() for v in chosen[:1]])  # a bad model value: one line
    m = cfg.model
    run(chosen, b.batch_size, m.img_size, m.in_chans, m.num_classes, device, amp, b.warmup, b.steps, b.rounds)
    rows = results(chosen, device)
    setting = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "batch_size": b.batch_size,
        "img_size": m.img_size,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "steps": b.steps,
        "rounds": b.rounds,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(
        f"{setting['device']}, {setting['precision']}, batch {b.batch_size}, {m.img_size} px, "
        f"median of {b.rounds} interleaved rounds of {b.steps} steps\n"
    )
    print(markdown(rows))
    out = Path(b.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"benchmark_{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    path.write_text(json.dumps({"setting": setting, "results": rows}, indent=2) + "\n")
    print(f"\n{path}")


if __name__ == "__main__":
    main()
