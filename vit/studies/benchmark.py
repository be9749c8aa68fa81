"""Speed, memory and FLOPs of our ViT against timm's with the same configuration, and of each
positional scheme and patch embedding against `learned_1d` with `conv`; optionally, the same
training step fed by the run's own data loader.

Variants are measured interleaved (A B C ... A B C ...), so that a noisy machine slows
them alike and their ratios hold; each figure is the median over rounds.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vit.studies.attention_kernel import attention_kernels
from vit.studies.gemm_rate import gemm_tflops
from vit.training import precision
from vit.training.data.augment import normalize
from vit.training.optim import build_optimizer

# Dense tensor-core peaks in TFLOP/s from NVIDIA's data sheets: bf16 (and fp16), and TF32,
# which fp32 matrix products run as (the trainer and the benchmark allow TF32). The first
# name that torch.cuda.get_device_name contains wins: the PCIe and NVL cards before the SXM.
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 417.5},
    "H200 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 417.5},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
}


def peak_tflops(device_name: str, precision_name: str) -> float | None:
    """The card's dense peak for that precision; None for a card (or a CPU) not in the table."""
    peaks = next((peaks for card, peaks in PEAK_TFLOPS.items() if card in device_name), {})
    return peaks.get(precision_name)


@dataclass
class Variant:
    name: str
    build: Callable[[], torch.nn.Module]
    scheme: str = "learned_1d"
    patch_embed: str = "conv"
    compiled: bool = False
    amp: torch.dtype | None = None  # the autocast dtype; None: fp32
    loader: Any = None  # a data loader to feed the training step, instead of one fixed batch
    against: str | None = None  # the variant this one is a headline ratio with
    optimizer: str = "adamw"  # or muon: Muon on the blocks' matrices, AdamW on the rest (optim=muon)
    train_ips: list[float] = field(default_factory=list)
    infer_ips: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    train_gflops: float = 0.0
    params: int = 0
    attention_kernel: str = ""  # torch's kernel for this model's attention, here, in its precision


def timm_equivalent(cfg) -> torch.nn.Module:
    """timm's VisionTransformer with the configuration of our conv + learned_1d model (for
    pool=seq, timm's average pooling: timm has no sequence pooling, one Linear(D, 1) less)."""
    from timm.models.vision_transformer import VisionTransformer

    m = cfg.model
    return VisionTransformer(
        img_size=m.img_size,
        patch_size=m.patch_size,
        in_chans=m.in_chans,
        num_classes=m.num_classes,
        embed_dim=m.embed_dim,
        depth=m.depth,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        qkv_bias=m.qkv_bias,
        drop_path_rate=m.drop_path_rate,
        class_token=m.pool == "cls",
        global_pool="token" if m.pool == "cls" else "avg",
    )


def memory_mb(device: torch.device, peak: bool, reset: bool = False) -> float:
    """Current or peak memory. CUDA: allocated by torch. CPU: the resident set (VmRSS /
    VmHWM), whose peak is reset through /proc/self/clear_refs (Linux)."""
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**20
    if reset:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
    key = "VmHWM:" if peak else "VmRSS:"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One variant's model, optimizer and data, with a training and an inference step."""

    def __init__(
        self,
        variant: Variant,
        *,
        batch: int,
        img_size: int,
        in_chans: int,
        classes: int,
        device: torch.device,
    ):
        self.model = variant.build().to(device)
        variant.params = sum(p.numel() for p in self.model.parameters())
        fused = device.type in ("cuda", "cpu") or None  # as the trainer's
        if variant.optimizer == "muon":
            ns = precision.ns_dtype(variant.amp)  # as the trainer's: fp32 in an fp32 run
            self.optimizer = build_optimizer(self.model, 1e-4, 0.05, (0.9, 0.999), fused, "muon", muon_ns_dtype=ns)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=fused)
        self.net = torch.compile(self.model) if variant.compiled else self.model
        self.x = torch.randn(batch, in_chans, img_size, img_size, device=device)
        self.y = torch.randint(0, classes, (batch,), device=device)
        self.autocast = partial(precision.autocast, device, variant.amp)
        self.device, self.loader = device, variant.loader

    def train_step(self) -> None:
        with self.autocast():
            loss = F.cross_entropy(self.net(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def loader_ips(self, epoch: int, mean: torch.Tensor, std: torch.Tensor) -> float:
        """Images/s of training steps fed by the loader, from a fresh epoch as in training (the
        loader's processes start each epoch with nothing loaded) to its end."""
        self.loader.set_epoch(epoch)
        sync(self.device)
        start, images = time.perf_counter(), 0
        for x, y in self.loader:
            self.x, self.y = normalize(x, mean, std), y
            self.train_step()
            images += len(y)
        sync(self.device)
        return images / (time.perf_counter() - start)

    @torch.no_grad()
    def infer_step(self) -> None:
        with self.autocast():
            self.net(self.x)


@torch.no_grad()
def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Matrix-product FLOPs of one eager forward pass (2 per multiply-add).

    Attention is counted on the math kernel, whose matrix products every torch release
    counts alike: whether the counter knows a fused kernel (CPU flash attention was missed
    in torch 2.14) would otherwise decide a scheme's FLOPs. A training step counts as 3
    forward passes (the backward pass does twice the forward's work): model FLOPs as in
    PaLM's MFU, with no recomputation counted."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def timed(step: Callable[[], None], steps: int, batch: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def release_memory(device: torch.device) -> None:
    """Hand freed memory back (CUDA cache; glibc's heap on Linux) so the next reading starts low."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def run(
    variants: list[Variant],
    batch: int,
    img_size: int,
    in_chans: int,
    classes: int,
    device: torch.device,
    warmup: int,
    steps: int,
    rounds: int,
    mean_std: tuple[list[float], list[float]] | None = None,
) -> dict[str, list[float]]:
    """Measure every variant. mean_std: the data's normalisation, for variants with a loader.
    Returns the machine's GEMM rate (TFLOP/s) in each variant's precision, once a round."""
    make = partial(Bench, batch=batch, img_size=img_size, in_chans=in_chans, classes=classes, device=device)
    compiled = sum(v.compiled for v in variants)
    if compiled:  # every compiled variant needs its own graphs (training, no-grad) of the same forward code;
        # past dynamo's recompile limit (8) the later variants would silently run eager
        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit, max(getattr(config, limit), 4 * compiled))
    make(variants[0]).train_step()  # one-time set-up (thread pools, kernels) is nobody's memory
    for v in variants:  # memory first, one variant alive at a time: weights, optimizer, activations
        release_memory(device)
        before = memory_mb(device, peak=False, reset=True)
        bench = make(v)
        for _ in range(2):  # the second step also holds the optimizer state
            bench.train_step()
        sync(device)
        v.peak_mb = memory_mb(device, peak=True) - before
        del bench
    release_memory(device)
    benches = [make(v) for v in variants]
    mean, std = (torch.tensor(t, device=device) for t in mean_std) if mean_std else (None, None)
    for v, b in zip(variants, benches, strict=True):
        v.train_gflops = 3 * forward_flops(b.model, b.x) / batch / 1e9
        v.attention_kernel = attention_kernels(b.model, b.x[:2], b.autocast)
        for _ in range(warmup):  # compile, allocator and kernel selection happen here
            b.train_step()
            b.infer_step()
        if v.loader is not None:  # and the loading processes start
            b.loader_ips(0, mean, std)
    dtypes = {precision.precision_name(v.amp): v.amp or torch.float32 for v in variants}
    gemm = {name: [] for name in dtypes}
    for round_ in range(1, rounds + 1):
        for name, dtype in dtypes.items():  # in the rounds, so that it drifts with the steps
            gemm[name].append(gemm_tflops(device, dtype))
        for v, b in zip(variants, benches, strict=True):
            if v.loader is not None:  # its inference is the plain variant's
                v.train_ips.append(b.loader_ips(round_, mean, std))
                continue
            v.train_ips.append(timed(b.train_step, steps, batch, device))
            v.infer_ips.append(timed(b.infer_step, steps, batch, device))
    return gemm


def results(variants: list[Variant], device: torch.device, gemm: dict[str, list[float]]) -> list[dict]:
    """A row per variant. `of_gemm`: its training FLOP/s as a fraction of the median GEMM
    rate measured in its precision in the same run; `mfu`: of the data sheet's peak (GPUs)."""
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    # each variant's cost is against the first ours learned_1d + conv compiled (or not) as it is
    reference = {
        v.compiled: statistics.median(v.train_ips)
        for v in reversed(variants)
        if v.name.startswith("ours") and (v.scheme, v.patch_embed) == ("learned_1d", "conv")
    }
    rows = []
    for v in variants:
        train = statistics.median(v.train_ips)
        infer = statistics.median(v.infer_ips) if v.infer_ips else None
        peak = peak_tflops(card, precision.precision_name(v.amp))
        gemm_rate = statistics.median(gemm[precision.precision_name(v.amp)])
        rows.append(
            {
                "variant": v.name,
                "scheme": v.scheme,
                "patch_embed": v.patch_embed,
                "compiled": v.compiled,
                "precision": precision.precision_name(v.amp),
                "fed_by_loader": v.loader is not None,
                "against": v.against,
                "params": v.params,
                "train_images_per_sec": train,
                "train_images_per_sec_rounds": v.train_ips,
                "infer_images_per_sec": infer,
                "train_step_cost_vs_ours_learned_1d": reference[v.compiled] / train,
                "peak_memory_mb": v.peak_mb,
                "train_gflops_per_image": v.train_gflops,
                "attention_kernel": v.attention_kernel,
                "mfu": train * v.train_gflops * 1e9 / (peak * 1e12) if peak else None,
                "gemm_tflops": gemm_rate,
                "of_gemm": train * v.train_gflops * 1e9 / (gemm_rate * 1e12),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    head = [
        "variant",
        "train img/s",
        "step cost vs ours learned_1d",
        "infer img/s",
        "peak MB",
        "train GFLOPs/img",
        "train GFLOP/s",
        "of GEMM",
        "MFU",
        "attention kernel",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "–"
        infer = "–" if r["infer_images_per_sec"] is None else f"{r['infer_images_per_sec']:,.0f}"
        lines.append(
            f"| {r['variant']} | {r['train_images_per_sec']:,.0f} | "
            f"{r['train_step_cost_vs_ours_learned_1d']:.2f}x | {infer} | "
            f"{r['peak_memory_mb']:,.0f} | {r['train_gflops_per_image']:.3f} | "
            f"{r['train_images_per_sec'] * r['train_gflops_per_image']:,.0f} | {100 * r['of_gemm']:.0f}% | "
            f"{mfu} | {r['attention_kernel']} |"
        )
    return "\n".join(lines)


def gemm_line(gemm: dict[str, list[float]]) -> str:
    """The machine's GEMM rates that the `of GEMM` column divides by."""
    rates = ", ".join(f"{name} {1000 * statistics.median(r):,.0f} GFLOP/s" for name, r in gemm.items())
    return f"this machine's GEMM rate (a square product): {rates}"


def paired_share(fed: list[float], fixed: list[float]) -> float:
    """The median over rounds of the loader-fed images/s against the fixed batch's of the same round."""
    return statistics.median(a / b for a, b in zip(fed, fixed, strict=True))


def headlines(rows: list[dict]) -> list[str]:
    """The two ratios a user asks for: what loading the data costs, and ours at the trainer's
    precision against timm at its default; each against its counterpart in the same run."""
    by_name, lines = {r["variant"]: r for r in rows}, []
    for row in (r for r in rows if r["against"] is not None):
        other = by_name[row["against"]]
        if row["fed_by_loader"]:
            # paired by round, as the two ran side by side: the machine's drift cancels
            share = paired_share(row["train_images_per_sec_rounds"], other["train_images_per_sec_rounds"])
            same_step = "of the images/s of the same step on a fixed batch"
            lines.append(f"fed by the data loader: {100 * share:.0f}% {same_step}")
        else:  # timm at its default fp32, against ours
            speed = other["train_images_per_sec"] / row["train_images_per_sec"]
            name = f"{other['variant']} in {other['precision']}"
            lines.append(f"{name}: {speed:.2f}x the training images/s of timm's at its default fp32")
    return lines
