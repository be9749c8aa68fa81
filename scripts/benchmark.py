"""Benchmark our ViT against timm's with the same configuration, and every positional scheme
and patch embedding against learned_1d + conv: training and inference images/s, the peak
memory of a training step, FLOPs per image, the step's fraction of this machine's own GEMM
rate (measured in the same run, in each precision) and (on H100/H200) model FLOPs utilisation.

    python scripts/benchmark.py                                   # the CIFAR preset, batch 128
    python scripts/benchmark.py model=vit_small data=imagefolder data.num_classes=100 benchmark.batch_size=256
    python scripts/benchmark.py trainer.precision=fp32 benchmark.compile=false
    python scripts/benchmark.py experiment=fashion_mnist "benchmark.vary=['model.depth=6','model.pool=seq']"

Every variant runs in the trainer's precision (`auto`: bf16 on CUDA and on a CPU with bf16
units, else fp32), and timm's also at its own default (fp32) when that differs; CUDA with and
without torch.compile. Every training step is fused AdamW's. `benchmark.vary` adds the
configured model under more model overrides, each string one variant, measured interleaved
with the rest; an entry with `optim=muon` steps with Muon and AdamW (`'optim=muon'`: the
optimizer's own cost). `benchmark.loader=true` adds our
step fed by the run's data loader, a whole epoch per round, to show what loading costs:

    python scripts/benchmark.py data=imagefolder data.root=DIR data.img_size=28 benchmark.loader=true

`benchmark.loader=only` measures class folders' loading alone, on one core: the PIL path
against the decoded cache (data.cache), and the cache's build time and size:

    python scripts/benchmark.py data=imagefolder data.root=DIR data.img_size=224 benchmark.loader=only

`benchmark.profile=true` instead lists where the configured training step's time goes, by
operator and by kind, with the configured optimizer, compiled as `trainer.compile` says:

    python scripts/benchmark.py experiment=fashion_mnist benchmark.profile=true benchmark.steps=20

Prints a markdown table and the headline ratios; writes the same figures as JSON to
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
from vit.cli import ConfigError, check_config, exit_on, fail, sleep_while_waiting, without_data
from vit.instantiate import instantiate_group


def ours(cfg: DictConfig, scheme: str, patch_embed: str):
    """Our model as configured, with another scheme or patch embedding swapped in."""
    swapped = OmegaConf.to_container(cfg.model, resolve=True)
    for group, option in (("pos_embed", scheme), ("patch_embed", patch_embed)):
        swapped[group] = OmegaConf.to_container(OmegaConf.load(registry.CONFIGS / "model" / group / f"{option}.yaml"))
    return partial(instantiate_group, OmegaConf.create({"model": swapped}), "model")


def variants(cfg: DictConfig, compiled_options: list[bool], amp, loader) -> list:
    """ours and timm's in the trainer's precision; timm's also at its default (fp32) when that
    differs; ours fed by the data loader when asked; then the other schemes and embeddings."""
    from vit.studies.benchmark import Variant, timm_equivalent

    choices = HydraConfig.get().runtime.choices
    scheme, patch = choices["model/pos_embed"], choices["model/patch_embed"]
    timm = partial(timm_equivalent, cfg)
    out = []
    for compiled in compiled_options:
        tag = " +compile" if compiled else ""
        mine, reference = partial(Variant, compiled=compiled, amp=amp), f"ours learned_1d conv{tag}"
        out.append(mine(reference, ours(cfg, "learned_1d", "conv")))
        if loader is not None:
            fed = f"{reference}, fed by the data loader"
            out.append(mine(fed, ours(cfg, "learned_1d", "conv"), loader=loader, against=reference))
        out.append(mine(f"timm learned_1d conv{tag}", timm))
        if amp is not None:
            default = f"timm learned_1d conv{tag} at its default fp32"
            out.append(Variant(default, timm, compiled=compiled, against=reference))
        if cfg.benchmark.compare:
            others = [s for s in registry.schemes() if s != "learned_1d"]
            out += [mine(f"ours {s} conv{tag}", ours(cfg, s, "conv"), s, "conv") for s in others]
            out += [
                mine(f"ours learned_1d {p}{tag}", ours(cfg, "learned_1d", p), "learned_1d", p)
                for p in registry.patch_embeds()
                if p != "conv"
            ]
        elif (scheme, patch) != ("learned_1d", "conv"):
            out.append(mine(f"ours {scheme} {patch}{tag}", ours(cfg, scheme, patch), scheme, patch))
        for overrides in cfg.benchmark.vary:
            build, choices, optimizer = varied(cfg, overrides)
            out.append(mine(f"ours {scheme} {patch} {overrides}{tag}", build, *choices, optimizer=optimizer))
    return out


def varied(cfg: DictConfig, overrides: str):
    """benchmark.vary: the configured model with more model or optimizer overrides (a
    space-separated string), composed as train.py would compose the command line followed by
    them. Returns the model's builder, its (scheme, patch embedding) and the optimizer's name."""
    from hydra import compose  # this app's own Hydra, already initialised on configs/
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    extra = overrides.split()
    if not extra or any(not o.lstrip("+~").startswith(("model", "optim")) for o in extra):
        fail(
            f"benchmark.vary: each entry is a string of model or optim overrides, such as 'model.depth=6' "
            f"or 'optim=muon', got {overrides!r}"
        )
    own = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(("benchmark", "hydra"))]
    bad_override = {HydraException: 2, OmegaConfBaseException: 2}
    composed = exit_on(bad_override, lambda: compose("train", [*own, *extra], return_hydra_config=True))
    composed.data.num_classes = cfg.data.num_classes  # counted (or given) once, for every variant
    exit_on({ConfigError: 2}, lambda: check_config(composed))
    choices = composed.hydra.runtime.choices
    model = OmegaConf.create({"model": OmegaConf.to_container(composed.model, resolve=True)})
    scheme_and_patch = (choices["model/pos_embed"], choices["model/patch_embed"])
    # every row steps with AdamW, as timm's model does, unless this entry names the optimizer
    optimizer = composed.optim.name if any(o.lstrip("+~").startswith("optim") for o in extra) else "adamw"
    return partial(instantiate_group, model, "model"), scheme_and_patch, optimizer


def loader_only(cfg: DictConfig, device) -> None:
    """benchmark.loader=only: the loaders alone, per core (vit/studies/loader_speed.py)."""
    import torch

    from vit.studies.loader_speed import loader_speed, markdown
    from vit.training.data import DataError
    from vit.training.data.imagefolder import ImageFolderData

    data = exit_on({ConfigError: 2}, lambda: instantiate_group(cfg, "data"))
    if not isinstance(data, ImageFolderData):
        fail("benchmark.loader=only compares the loaders of class folders: set data=imagefolder data.root=DIR")
    b = cfg.benchmark
    report = exit_on({DataError: 1}, lambda: loader_speed(data, device, cfg.seed, b.steps, b.rounds))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {platform.processor() or 'x86'}"
    print(f"{data.img_size} px, batch {data.batch_size}, median of {b.rounds} rounds of {b.steps} batches\n")
    print(markdown(report, name))
    setting = {
        "device": name,
        "img_size": data.img_size,
        "batch_size": data.batch_size,
        "date": time.strftime("%Y-%m-%d"),
    }
    write_report({"setting": setting, **report}, b.out_dir, "loaders")


def profile(cfg: DictConfig, device, amp) -> None:
    """benchmark.profile=true: the configured training step by operator (vit/studies/profile_step.py)."""
    import dataclasses

    import torch

    from vit.studies.benchmark import Bench, Variant
    from vit.studies.gemm_rate import gemm_tflops
    from vit.studies.profile_step import markdown, profile_steps
    from vit.training.precision import precision_name

    b, m, compiled = cfg.benchmark, cfg.model, bool(cfg.trainer.compile)
    variant = Variant("ours", partial(instantiate_group, cfg, "model"), compiled=compiled, amp=amp)
    variant.optimizer = cfg.optim.name
    # inductor's generated kernels as operators of their own, not one opaque compiled region
    with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
        bench = Bench(
            variant, batch=b.batch_size, img_size=m.img_size, in_chans=m.in_chans, classes=m.num_classes, device=device
        )
        for _ in range(b.warmup):
            bench.train_step()
        rows, wall_ms = profile_steps(bench.train_step, b.steps, device)
    gemm = gemm_tflops(device, amp or torch.float32)
    name = precision_name(amp)
    print(
        f"{device_name(device)}, {name}, {cfg.optim.name}, {'compiled' if compiled else 'eager'}, batch "
        f"{b.batch_size}, {b.steps} steps after {b.warmup}; "
        f"this machine's {name} GEMM rate: {1000 * gemm:,.0f} GFLOP/s\n"
    )
    print(markdown(rows, wall_ms, gemm))
    setting = {
        "device": device_name(device),
        "precision": name,
        "optimizer": cfg.optim.name,
        "compiled": compiled,
        "batch_size": b.batch_size,
        "steps": b.steps,
        "gemm_tflops": gemm,
        "step_ms": wall_ms,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_report({"setting": setting, "operators": [dataclasses.asdict(r) for r in rows]}, b.out_dir, "profile")


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_report(report: dict, out_dir: str, kind: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}_{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{path}")


def data_loader(cfg: DictConfig, device):
    """The training split's loader as train.py builds it (one process), or None."""
    if not cfg.benchmark.loader:
        return None, None
    from vit.training.data import DataError

    data = exit_on({ConfigError: 2}, lambda: instantiate_group(cfg, "data"))
    if data.batch_size != cfg.benchmark.batch_size:
        fail("benchmark.loader=true compares like with like: set data.batch_size, not benchmark.batch_size")
    loader, _ = exit_on({DataError: 1}, lambda: data.loaders(device, 0, 1, cfg.seed))
    return loader, (data.mean, data.std)


@hydra.main(config_path="../configs", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_on({ConfigError: 2}, lambda: check_config(cfg))  # before torch: a bad value is answered at once
    if cfg.benchmark.loader:
        sleep_while_waiting(cfg)
    import torch

    from vit.errors import TrainingError
    from vit.studies.benchmark import gemm_line, headlines, markdown, results, run
    from vit.training.device import choose_device
    from vit.training.precision import allow_tf32, choose_precision, precision_name

    device = exit_on({TrainingError: 2}, lambda: choose_device(cfg.trainer.device))
    if cfg.benchmark.loader == "only":
        return loader_only(cfg, device)
    cfg = exit_on({ConfigError: 2}, lambda: without_data(cfg))
    b, m = cfg.benchmark, cfg.model
    amp = exit_on({ConfigError: 2}, lambda: choose_precision(cfg.trainer.precision, device))
    allow_tf32()  # as the trainer: fp32 matrix products on tensor cores
    if b.profile:
        exit_on({ConfigError: 2}, lambda: instantiate_group(cfg, "model"))  # a bad model value: one line
        return profile(cfg, device, amp)
    both, cuda = [False, True], device.type == "cuda"
    compiled = {"auto": both if cuda else [False], "both": both, True: [True], False: [False]}[b.compile]
    loader, mean_std = data_loader(cfg, device)
    chosen = variants(cfg, compiled, amp, loader)
    exit_on({ConfigError: 2}, lambda: [v.build() for v in chosen[:1]])  # a bad model value: one line
    gemm = run(
        chosen, b.batch_size, m.img_size, m.in_chans, m.num_classes, device, b.warmup, b.steps, b.rounds, mean_std
    )
    rows = results(chosen, device, gemm)
    setting = {
        "device": device_name(device),
        "precision": precision_name(amp),
        "batch_size": b.batch_size,
        "img_size": m.img_size,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "steps": b.steps,
        "rounds": b.rounds,
        "gemm_tflops": gemm,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(
        f"{setting['device']}, {setting['precision']}, batch {b.batch_size}, {m.img_size} px, "
        f"median of {b.rounds} interleaved rounds of {b.steps} steps; {gemm_line(gemm)}\n"
    )
    print(markdown(rows))
    lines = headlines(rows)
    print("\n".join(["", *lines]) if lines else "", end="")
    write_report({"setting": setting, "results": rows, "headlines": lines}, b.out_dir, "benchmark")


if __name__ == "__main__":
    main()
