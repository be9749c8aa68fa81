"""Where a training step's time goes, by operator and by kind of work (torch.profiler).

`benchmark.profile=true` profiles the configured model's training step with the configured
optimizer, compiled as the trainer would compile it, in the trainer's precision, after the
warm-up: a row per operator (its own time per step, not its callees'), then the same time
summed by kind. Matrix products run at some fraction of the machine's GEMM rate; the rest of
the step (normalisation, activations, attention's softmax, the optimizer) does few FLOPs
and is bound by memory or by the launch of each operator: how much of the step it takes is
what keeps a small model below the GEMM rate.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

# the first pattern an operator's name matches gives its kind; the names are torch's (aten::,
# inductor's generated cpp_fused_* / triton_* kernels, record_function labels)
KINDS = [
    (
        "matrix products",
        r"aten::(mm|addmm|bmm|baddbmm|addbmm|matmul|linear|_?convolution|mkldnn_convolution|"
        r"convolution_backward|conv2d)\b|mkldnn::|onednn::",
    ),
    ("attention kernel", r"scaled_dot_product|_flash_attention|_efficient_attention|_cudnn_attention"),
    ("optimizer", r"_fused_adamw|_foreach_|Optimizer\.|aten::lerp"),
    ("compiled fused kernels", r"cpp_fused|triton_|kernel_cpp|CompiledFunction|Torch-Compiled|CompiledFxGraph"),
    ("normalisation, activations, pooling", r"layer_norm|gelu|softmax|dropout|relu|threshold|clamp_min|max_pool"),
    (
        "copies and layout",
        r"aten::(copy_|to|_to_copy|contiguous|clone|cat|stack|permute|transpose|view|reshape|t|"
        r"empty|empty_like|zeros|zeros_like|fill_|as_strided|unsqueeze|expand|select|slice)\b",
    ),
]


@dataclass
class OpRow:
    name: str
    kind: str
    calls: float  # per step
    self_ms: float  # per step, on the host thread (CPU) or the device (CUDA)
    gflop: float  # per step, where the profiler counts it (matrix products and convolutions)


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name)), "other")


def profile_steps(step, steps: int, device: torch.device) -> tuple[list[OpRow], float]:
    """Run `step` `steps` times under the profiler; the operators, busiest first, and the
    wall time of a step in ms (measured without the profiler, which adds its own)."""
    from torch.profiler import ProfilerActivity, profile

    from vit.studies.benchmark import sync

    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    wall_ms = (time.perf_counter() - start) / steps * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, with_flops=True) as prof:
        for _ in range(steps):
            step()
        sync(device)
    rows = []
    for event in prof.key_averages():
        own = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if own > 0:
            rows.append(
                OpRow(event.key, kind_of(event.key), event.count / steps, own / steps / 1e3, event.flops / steps / 1e9)
            )
    return sorted(rows, key=lambda r: -r.self_ms), wall_ms


def by_kind(rows: list[OpRow]) -> dict[str, tuple[float, float]]:
    """Per kind: (ms per step, GFLOP per step), busiest first."""
    totals = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        totals[r.kind][0] += r.self_ms
        totals[r.kind][1] += r.gflop
    return dict(sorted(((k, (ms, gf)) for k, (ms, gf) in totals.items()), key=lambda kv: -kv[1][0]))


def markdown(rows: list[OpRow], wall_ms: float, gemm_tflops: float, top: int = 20) -> str:
    """The busiest operators, then the kinds; rates against the machine's GEMM rate."""
    total = sum(r.self_ms for r in rows)
    lines = [
        f"step: {wall_ms:.1f} ms wall; {total:.1f} ms of operators' own time in the profile",
        "",
        "| operator | kind | calls/step | ms/step | share | GFLOP/s | of GEMM |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows[:top]:
        lines.append(
            f"| `{r.name}` | {r.kind} | {r.calls:g} | {r.self_ms:.2f} | {100 * r.self_ms / total:.1f}% | "
            + rate(r.gflop, r.self_ms, gemm_tflops)
            + " |"
        )
    lines += ["", "| kind | ms/step | share | GFLOP/s | of GEMM |", "| --- | --- | --- | --- | --- |"]
    for kind, (ms, gflop) in by_kind(rows).items():
        lines.append(f"| {kind} | {ms:.2f} | {100 * ms / total:.1f}% | " + rate(gflop, ms, gemm_tflops) + " |")
    return "\n".join(lines)


def rate(gflop: float, ms: float, gemm_tflops: float) -> str:
    if gflop <= 0 or ms <= 0:
        return "– | –"
    gflops = gflop / ms * 1e3
    return f"{gflops:,.0f} | {100 * gflops / (gemm_tflops * 1e3):.0f}%"
