"""The benchmark runs on CPU and reports every variant against the same reference."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_table_and_json(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "model.depth=1", "model.embed_dim=48",
         "model.num_heads=4", "benchmark.batch_size=8", "benchmark.steps=1", "benchmark.rounds=2",
         "benchmark.warmup=1", f"benchmark.out_dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("benchmark_*.json")).read_text())
    rows = {r["variant"]: r for r in report["results"]}
    expected = {"ours learned_1d conv", "timm learned_1d conv", "ours none conv", "ours sincos_2d conv",
                "ours relative_bias conv", "ours rope_2d conv", "ours learned_1d linear", "ours learned_1d conv_stem"}
    assert set(rows) == expected
    assert rows["ours learned_1d conv"]["train_step_cost_vs_ours_learned_1d"] == 1.0
    assert rows["timm learned_1d conv"]["params"] == rows["ours learned_1d conv"]["params"]  # the same model
    # the same FLOPs for the same model; a conv stem does more work per image
    assert rows["timm learned_1d conv"]["train_gflops_per_image"] == rows["ours learned_1d conv"]["train_gflops_per_image"]
    assert rows["ours learned_1d conv_stem"]["train_gflops_per_image"] > rows["ours learned_1d conv"]["train_gflops_per_image"]
    # model FLOPs: a positional scheme adds no matrix products, whichever attention kernel it gets
    assert rows["ours relative_bias conv"]["train_gflops_per_image"] == rows["ours learned_1d conv"]["train_gflops_per_image"]
    for row in rows.values():
        assert row["train_images_per_sec"] > 0 and row["infer_images_per_sec"] > 0 and row["mfu"] is None
    assert report["setting"]["precision"] == "fp32" and report["setting"]["batch_size"] == 8
    assert "| timm learned_1d conv |" in proc.stdout


def test_compiled_variants_are_costed_against_the_compiled_reference():
    from vit.benchmark import Variant, results

    def variant(name, compiled, ips):
        v = Variant(name, build=None, compiled=compiled, train_gflops=1.0)
        v.train_ips, v.infer_ips = ips, ips
        return v

    eager_only = [variant("ours learned_1d conv", False, [100.0]), variant("timm learned_1d conv", False, [80.0])]
    compiled_only = [variant("ours learned_1d conv +compile", True, [200.0]),
                     variant("timm learned_1d conv +compile", True, [250.0])]
    rows = results(eager_only + compiled_only, torch.device("cpu"))
    assert [r["train_step_cost_vs_ours_learned_1d"] for r in rows] == [1.0, 1.25, 1.0, 0.8]
    rows = results(compiled_only, torch.device("cpu"))  # benchmark.compile=true: no eager reference
    assert [r["train_step_cost_vs_ours_learned_1d"] for r in rows] == [1.0, 0.8]


def test_every_compiled_variant_stays_compiled(caplog):
    # each compiled variant adds graphs for the same forward code; past dynamo's recompile
    # limit the later ones would silently fall back to eager (lowered here to 2 to see it cheaply)
    from functools import partial

    from conftest import tiny_vit
    from vit.benchmark import Variant, run

    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    torch._dynamo.reset()
    variants = [Variant(s, partial(tiny_vit, "conv", "cls", s), scheme=s, compiled=True)
                for s in ("learned_1d", "rope_2d")]
    with caplog.at_level(logging.WARNING), config.patch(**{limit: 2}):  # patch() restores it afterwards
        run(variants, 2, 16, 3, 7, torch.device("cpu"), None, warmup=1, steps=1, rounds=1)
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage() or "cache_size_limit" in r.getMessage()]
