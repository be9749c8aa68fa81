"""The benchmark: model FLOPs against the analytic count, every variant against the same
reference, compiled variants that stay compiled, and the script's table and JSON."""

import json
import statistics
from functools import partial

import pytest
import torch
from benchmark_report import expected_variants

from conftest import POOLS, SCHEMES, tiny_vit
from data_files import make_class_folders
from runs import one_error_line, script
from vit import registry
from vit.studies.benchmark import Variant, forward_flops, peak_tflops, results, run
from vit.studies.profile_step import kind_of


def vit_matmul_flops(
    *, img: int, patch: int, chans: int, dim: int, depth: int, mlp: int, classes: int, cls: bool
) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of one image through a ViT."""
    patches = (img // patch) ** 2
    n = patches + cls
    block = (
        2 * n * dim * 3 * dim  # qkv
        + 2 * n * n * dim  # scores q.k, all heads
        + 2 * n * n * dim  # attention times values
        + 2 * n * dim * dim  # output projection
        + 2 * 2 * n * dim * mlp  # the MLP's two layers
    )
    return 2 * patches * (chans * patch * patch) * dim + depth * block + 2 * dim * classes


def benchmark_script(tmp_path, *args: str, kind: str = "benchmark"):
    """`python scripts/benchmark.py ARGS` writing into tmp_path: its process and its JSON report."""
    proc = script("benchmark.py", *args, f"benchmark.out_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(next(tmp_path.glob(f"{kind}_*.json")).read_text())


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("patch_embed", ["conv", "linear"])
def test_forward_flops_are_the_models_matrix_products(scheme, pool, patch_embed):
    # a scheme adds no matrix products, whichever attention kernel it gets (a bias takes the
    # math kernel, the others a fused one), except a convolution over the patch grid (cpe):
    # same-padded, it costs one multiply-add per weight at each of the 16 patch positions
    model = tiny_vit(patch_embed, pool, scheme).eval()  # 16 px, patch 4, width 32, 2 blocks, MLP 128, 7 classes
    expected = vit_matmul_flops(img=16, patch=4, chans=3, dim=32, depth=2, mlp=128, classes=7, cls=pool == "cls")
    convs = [m for m in model.pos_embed.modules() if isinstance(m, torch.nn.Conv2d)]
    expected += sum(2 * 16 * conv.weight.numel() for conv in convs)
    expected += 2 * 16 * 32 if pool == "seq" else 0  # sequence pooling scores each of the 16 tokens
    assert forward_flops(model, torch.zeros(3, 3, 16, 16)) == 3 * expected  # a batch of 3


def test_compiled_variants_are_costed_against_the_compiled_reference():
    def variant(name, compiled, ips):
        v = Variant(name, build=None, compiled=compiled, train_gflops=1.0)
        v.train_ips, v.infer_ips = ips, ips
        return v

    eager_only = [variant("ours learned_1d conv", False, [100.0]), variant("timm learned_1d conv", False, [80.0])]
    compiled_only = [
        variant("ours learned_1d conv +compile", True, [200.0]),
        variant("timm learned_1d conv +compile", True, [250.0]),
    ]
    gemm = {"fp32": [0.5, 0.4, 0.1]}  # TFLOP/s, once a round: the median is the rate
    rows = results(eager_only + compiled_only, torch.device("cpu"), gemm)
    assert [r["train_step_cost_vs_ours_learned_1d"] for r in rows] == [1.0, 1.25, 1.0, 0.8]
    # 1 GFLOP an image: 100 images/s is 100 GFLOP/s, a quarter of a 400 GFLOP/s product
    assert [r["of_gemm"] for r in rows] == pytest.approx([0.25, 0.2, 0.5, 0.625])
    rows = results(compiled_only, torch.device("cpu"), gemm)  # benchmark.compile=true: no eager reference
    assert [r["train_step_cost_vs_ours_learned_1d"] for r in rows] == [1.0, 0.8]


def test_every_compiled_variant_stays_compiled(monkeypatch):
    # each compiled variant adds graphs (training, no-grad) for the same forward code; past
    # dynamo's recompile limit the later ones would silently run eager. A backend that only
    # counts the graphs it is handed shows it without compiling anything.
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    monkeypatch.setattr(torch, "compile", partial(torch.compile, backend=counting_backend))
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    torch._dynamo.reset()
    schemes = ["learned_1d", "rope_2d"]
    variants = [Variant(s, partial(tiny_vit, "conv", "cls", s), scheme=s, compiled=True) for s in schemes]
    with config.patch(**{limit: 2}):  # patch() restores it afterwards
        run(variants, 2, 16, 3, 7, torch.device("cpu"), warmup=1, steps=1, rounds=1)
    torch._dynamo.reset()
    # every variant traced its training and its no-grad forward (and nothing fell back to eager)
    assert len(graphs) >= 2 * len(schemes)


def test_benchmark_script_table_and_json(tmp_path):
    proc, report = benchmark_script(
        tmp_path,
        "model.depth=1",
        "model.embed_dim=48",
        "model.num_heads=4",
        "benchmark.batch_size=8",
        "benchmark.steps=1",
        "benchmark.rounds=2",
        "benchmark.warmup=1",
        "trainer.precision=fp32",  # auto would be bf16 on a CPU with AMX
        "benchmark.vary=['model.depth=2 model.mlp_ratio=1','model.pool=seq','optim=muon']",
    )
    rows = {r["variant"]: r for r in report["results"]}
    # benchmark.vary: the configured model under more overrides, each string one variant
    deeper, pooled, muon = (
        rows.pop("ours learned_1d conv model.depth=2 model.mlp_ratio=1"),
        rows.pop("ours learned_1d conv model.pool=seq"),
        rows.pop("ours learned_1d conv optim=muon"),
    )
    # the same model, stepped by Muon with AdamW
    assert (muon["params"], muon["train_gflops_per_image"]) == (
        rows["ours learned_1d conv"]["params"],
        rows["ours learned_1d conv"]["train_gflops_per_image"],
    )
    flops = vit_matmul_flops(img=32, patch=4, chans=3, dim=48, depth=2, mlp=48, classes=10, cls=True)
    assert deeper["train_gflops_per_image"] == pytest.approx(3 * flops / 1e9, rel=1e-12)
    # no class token, nor its row of the positional table; a score per token: Linear(48, 1)
    assert pooled["params"] == rows["ours learned_1d conv"]["params"] - 48 - 48 + 49
    expected = {"ours learned_1d conv", "timm learned_1d conv"}
    expected |= {f"ours {s} conv" for s in registry.schemes()}
    expected |= {f"ours learned_1d {p}" for p in registry.patch_embeds()}
    assert set(rows) == expected
    reference = rows["ours learned_1d conv"]
    assert reference["train_step_cost_vs_ours_learned_1d"] == 1.0
    assert rows["timm learned_1d conv"]["params"] == reference["params"]  # the same model
    # 32 px CIFAR images, patch 4, width 48, 1 block, MLP ratio 2, 10 classes; x3 for a training step
    flops = 3 * vit_matmul_flops(img=32, patch=4, chans=3, dim=48, depth=1, mlp=96, classes=10, cls=True)
    peg = 3 * 2 * (32 // 4) ** 2 * 48 * 9  # cpe: a 3x3 depthwise convolution over the 8x8 grid
    stems = {f"ours learned_1d {p}" for p in registry.patch_embeds() if p not in ("conv", "linear")}
    for name in expected - stems:  # patchify: the same for timm's model and every other scheme
        extra = peg if name == "ours cpe conv" else 0
        assert rows[name]["train_gflops_per_image"] == pytest.approx((flops + extra) / 1e9, rel=1e-12), name
    for name in stems:  # a convolutional stem does more work than a linear map of each patch
        assert rows[name]["train_gflops_per_image"] > reference["train_gflops_per_image"]
    gemm = report["setting"]["gemm_tflops"]  # measured once a round, in each row's precision
    assert list(gemm) == ["fp32"] and len(gemm["fp32"]) == 2 and min(gemm["fp32"]) > 0
    for row in rows.values():
        assert row["train_images_per_sec"] > 0 and row["infer_images_per_sec"] > 0 and row["mfu"] is None
        step = row["train_images_per_sec"] * row["train_gflops_per_image"] / 1000
        assert row["of_gemm"] == pytest.approx(step / statistics.median(gemm["fp32"]))
    assert report["setting"]["precision"] == "fp32" and report["setting"]["batch_size"] == 8
    assert "this machine's GEMM rate (a square product): fp32 " in proc.stdout
    assert "| timm learned_1d conv |" in proc.stdout


def test_benchmark_vary_takes_model_and_optimizer_overrides_only(tmp_path):
    proc = script("benchmark.py", "benchmark.vary=['data.batch_size=64']", cwd=tmp_path)
    assert one_error_line(proc, code=2) == (
        "error: benchmark.vary: each entry is a string of model or optim overrides, such as 'model.depth=6' "
        "or 'optim=muon', got 'data.batch_size=64'"
    )


def test_benchmark_script_feeds_the_step_from_the_loader_and_compares_with_timms_default(tmp_path):
    root = make_class_folders(tmp_path / "tree", per_class=(8, 2))
    proc, report = benchmark_script(
        tmp_path,
        "data=imagefolder",
        f"data.root={root}",
        "data.img_size=16",
        "data.batch_size=4",
        "data.num_workers=1",
        "model.depth=1",
        "model.embed_dim=32",
        "model.num_heads=2",
        "trainer.precision=bf16",
        "benchmark.compare=false",
        "benchmark.loader=true",
        "benchmark.steps=1",
        "benchmark.rounds=2",
        "benchmark.warmup=1",
    )
    rows = {r["variant"]: r for r in report["results"]}
    fed, default = "ours learned_1d conv, fed by the data loader", "timm learned_1d conv at its default fp32"
    assert set(rows) == expected_variants([False], report["setting"]["precision"]) | {fed}  # as test_cuda reads it
    assert report["setting"]["precision"] == "bf16" and set(report["setting"]["gemm_tflops"]) == {"bf16", "fp32"}
    assert rows[default]["of_gemm"] * rows[default]["gemm_tflops"] == pytest.approx(
        rows[default]["train_images_per_sec"] * rows[default]["train_gflops_per_image"] / 1000
    )
    assert rows[default]["gemm_tflops"] == statistics.median(report["setting"]["gemm_tflops"]["fp32"])
    kernels = {r["attention_kernel"] for r in report["results"] if r["precision"] == "bf16"}
    assert kernels == {"math"}  # bf16 on a CPU: the math kernel
    assert [rows[name]["precision"] for name in ("ours learned_1d conv", fed, default)] == ["bf16", "bf16", "fp32"]
    assert rows[fed]["fed_by_loader"] and rows[fed]["infer_images_per_sec"] is None
    assert rows[fed]["params"] == rows["ours learned_1d conv"]["params"] == rows[default]["params"]
    assert rows[fed]["params"] > 0 and report["setting"]["model"]["num_classes"] == 3  # counted from the folders
    fed_ips, fixed_ips = (rows[name]["train_images_per_sec_rounds"] for name in (fed, "ours learned_1d conv"))
    assert len(fed_ips) == len(fixed_ips) == 2 and rows[fed]["train_images_per_sec"] == statistics.median(fed_ips)
    share = statistics.median([a / b for a, b in zip(fed_ips, fixed_ips, strict=True)])  # paired by round
    speed = rows["ours learned_1d conv"]["train_images_per_sec"] / rows[default]["train_images_per_sec"]
    assert report["headlines"] == [
        f"fed by the data loader: {100 * share:.0f}% of the images/s of the same step on a fixed batch",
        f"ours learned_1d conv in bf16: {speed:.2f}x the training images/s of timm's at its default fp32",
    ]
    assert "| ours learned_1d conv, fed by the data loader |" in proc.stdout and report["headlines"][0] in proc.stdout
    mismatch = script(
        "benchmark.py",
        "data=imagefolder",
        f"data.root={root}",
        "benchmark.loader=true",
        "benchmark.batch_size=3",
        cwd=tmp_path,
    )
    assert mismatch.returncode == 2 and "set data.batch_size, not benchmark.batch_size" in mismatch.stderr


@pytest.mark.parametrize(
    "card, bf16, fp32",
    [
        ("NVIDIA H100 80GB HBM3", 989.4, 494.7),
        ("NVIDIA H100 PCIe", 756.0, 378.0),
        ("NVIDIA H100 NVL", 835.0, 417.5),
        ("NVIDIA H200", 989.4, 494.7),
        ("NVIDIA H200 NVL", 835.0, 417.5),
        ("NVIDIA A10G", None, None),
        ("cpu", None, None),
    ],
)
def test_mfu_divides_by_the_cards_own_peak_for_the_rows_precision(card, bf16, fp32):
    assert (peak_tflops(card, "bf16"), peak_tflops(card, "fp32")) == (bf16, fp32)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("aten::mm", "matrix products"),
        ("aten::baddbmm", "matrix products"),  # Muon's Newton-Schulz iterations
        ("aten::convolution_backward", "matrix products"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention kernel"),
        ("aten::_fused_adamw_", "optimizer"),
        ("aten::_foreach_lerp_", "optimizer"),
        ("graph_0_cpp_fused_add_native_layer_norm_0", "compiled fused kernels"),
        ("aten::clamp_min_", "normalisation, activations, pooling"),  # the tokenizer's ReLU
        ("aten::t", "copies and layout"),
        ("aten::tanh", "other"),
    ],
)
def test_the_profile_sorts_operators_by_the_work_they_do(name, kind):
    assert kind_of(name) == kind


def test_benchmark_profile_lists_the_configured_step_by_operator(tmp_path):
    proc, report = benchmark_script(
        tmp_path,
        "model.depth=1",
        "model.embed_dim=32",
        "model.num_heads=2",
        "optim=muon",
        "trainer.precision=fp32",
        "benchmark.batch_size=8",
        "benchmark.steps=2",
        "benchmark.warmup=1",
        "benchmark.profile=true",
        kind="profile",
    )
    setting, operators = report["setting"], report["operators"]
    assert (setting["optimizer"], setting["precision"], setting["compiled"]) == ("muon", "fp32", False)
    assert setting["gemm_tflops"] > 0 and setting["step_ms"] > 0
    kinds = {op["kind"] for op in operators}
    assert {"matrix products", "optimizer"} <= kinds  # the model's products, and Muon with AdamW's step
    assert sum(op["gflop"] for op in operators if op["kind"] == "matrix products") > 0
    times = [op["self_ms"] for op in operators]
    assert times == sorted(times, reverse=True) and min(times) > 0  # the busiest first
    assert "| kind | ms/step | share |" in proc.stdout and "timm" not in proc.stdout  # no comparison
