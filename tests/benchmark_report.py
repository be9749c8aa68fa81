"""What a benchmark with `benchmark.compare=false` writes, read by the CPU and the GPU tests."""


def expected_variants(compiled: list[bool], precision: str) -> set[str]:
    """Ours and timm's in the run's precision, and timm's at its default fp32 when that differs."""
    names = set()
    for tag in (" +compile" if c else "" for c in compiled):
        names |= {f"ours learned_1d conv{tag}", f"timm learned_1d conv{tag}"}
        if precision != "fp32":
            names.add(f"timm learned_1d conv{tag} at its default fp32")
    return names
