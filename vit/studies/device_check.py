"""The checks `make gpu-check` runs on a GPU it has never seen (and, small, on a CPU for CI).

Each check returns a `Check`: ok, failed (with the error's last line) or skipped (with why),
and what it measured. A failing check never stops the others; the report says which failed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the tests that check CPU behaviour with a GPU present: they must pin the CPU
CPU_BEHAVIOUR_TESTS = [
    "tests/test_train.py::test_interrupted_and_killed_runs_resume_to_bit_identical_weights",
    "tests/test_train.py::test_two_gloo_processes_through_torchrun_match_one_process",
    "tests/test_train.py::test_a_test_of_cpu_behaviour_trains_on_the_cpu_where_torch_sees_a_gpu",
    "tests/test_ablation.py::test_eval_script_matches_what_training_logged[cpu]",
]


@dataclass
class Check:
    name: str
    status: str = "ok"  # ok | failed | skipped
    note: str = ""
    seconds: float = 0.0
    results: dict = field(default_factory=dict)


def run_check(name: str, task, *args) -> Check:
    """`task(*args) -> dict` (or a Check, for a skip) as one check, timed; an exception is a
    failed check with its last line, its traceback printed for whoever reads the log."""
    started = time.time()
    try:
        outcome = task(*args)
        check = outcome if isinstance(outcome, Check) else Check(name, results=outcome)
    except Exception as e:  # a check that fails is reported, and the others still run
        traceback.print_exc()
        check = Check(
            name, "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        )
    check.name, check.seconds = name, time.time() - started
    print(f"{name}: {check.status} ({check.seconds:.0f} s){' - ' + check.note if check.note else ''}", flush=True)
    return check


def script(args: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    """One of our scripts (or pytest) as a user runs it; a non-zero exit is an error with its last line."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"{' '.join(args[:2])} exited {proc.returncode}: {last}")
    return proc


# --- the machine ----------------------------------------------------------------------------


def versions() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        info.update(
            device=torch.cuda.get_device_name(),
            capability=".".join(map(str, torch.cuda.get_device_capability())),
            cudnn=torch.backends.cudnn.version(),
            gpus=torch.cuda.device_count(),
        )
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
        info["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


# --- the tests ------------------------------------------------------------------------------


def tests(cpu: bool, timeout: float) -> dict:
    """`pytest -m cuda`, then the CPU-behaviour tests (skipped in --cpu: `make test` runs them)."""
    base = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
    results = {"cuda": script([*base, "-m", "cuda"], timeout, ROOT).stdout.strip().splitlines()[-1]}
    if not cpu:
        results["cpu_behaviour"] = script([*base, *CPU_BEHAVIOUR_TESTS], timeout, ROOT).stdout.strip().splitlines()[-1]
    return results


# --- every scheme on this device --------------------------------------------------------------


def schemes(device_name: str, compiled: bool, small: bool) -> dict:
    """Per scheme: torch's attention kernel, then training steps (bf16 where the device has
    it; compiled on a GPU) of vit_cifar at 2 blocks (tiny in --cpu), and their time."""
    from vit import registry

    results = {}
    for scheme in registry.schemes():
        try:
            results[scheme] = scheme_steps(scheme, device_name, compiled, small, steps=3 if small else 10)
        except Exception as e:  # one scheme failing is that scheme's result
            results[scheme] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}"}
    failed = [s for s, r in results.items() if "error" in r]
    if failed:
        raise RuntimeError(f"{', '.join(failed)} failed: {results[failed[0]]['error']}")
    return results


def scheme_steps(scheme: str, device_name: str, compiled: bool, small: bool, steps: int = 10) -> dict:
    """One scheme's kernel and operator count, then its training step as the benchmark times it."""
    import torch

    from vit.cli import compose
    from vit.instantiate import build_model
    from vit.studies.attention_kernel import attention_kernels
    from vit.studies.benchmark import Bench, Variant, sync, timed
    from vit.studies.op_count import step_ops
    from vit.training import precision
    from vit.training.device import choose_device

    size = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2"] if small else ["model.depth=2"]
    cfg = compose("train", ["model=vit_cifar", "data=cifar10", f"model/pos_embed={scheme}", *size])
    device = choose_device(device_name)
    dtype = precision.choose_precision("auto", device)
    batch = 8 if small else 256
    torch._dynamo.reset()  # each scheme's graphs from scratch, within dynamo's recompile limit
    variant = Variant(scheme, lambda: build_model(cfg), scheme, compiled=compiled, amp=dtype)
    bench = Bench(variant, batch=batch, img_size=32, in_chans=3, classes=10, device=device)
    ops, views = step_ops(bench.model, bench.x[:2], 10, bench.autocast)
    started = time.time()
    for _ in range(3):  # compile and warm up
        bench.train_step()
    sync(device)
    warmup_s = time.time() - started
    return {
        "kernel": attention_kernels(bench.model, bench.x[:2], bench.autocast),
        "eager_ops": ops - views,  # operators per eager step, views aside: about a kernel launch each
        "precision": precision.precision_name(dtype),
        "compiled": compiled,
        "warmup_s": warmup_s,
        "step_ms": 1000 * batch / timed(bench.train_step, steps, batch, device),
    }


# --- host synchronisation ------------------------------------------------------------------------


def host_syncs(device_name: str) -> dict | Check:
    """The host waits on the GPU during one training step (fetch, augment, step), counted
    with torch.cuda.set_sync_debug_mode on the trainer's own code: scikit-learn's digits in
    memory, crop, TrivialAugment and Mixup on the device, bf16, eager; and class folders
    through the decoded cache (the boxes' resize and TrivialAugment on the device)."""
    import torch

    from vit.studies.class_folders import make_jpegs

    if not torch.cuda.is_available():
        return Check("host syncs", "skipped", "no CUDA device: the sync debug mode is CUDA's")
    model = [f"trainer.device={device_name}", "model.embed_dim=64", "model.depth=2", "model.num_heads=4"]
    digits = step_syncs(["experiment=digits", "+data.policy=trivialaugment", "data.mixup=0.2", *model])
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpegs(Path(tmp) / "jpegs", 2, (16, 2))
        folders = ["data=imagefolder", f"data.root={root}", "data.cache=true", f"data.cache_dir={tmp}/cache"]
        folders += ["data.img_size=64", "data.batch_size=8", "data.policy=trivialaugment", "model.patch_size=8"]
        cache = step_syncs([*folders, *model])
    return {**digits, "cache syncs": cache["syncs"], "cache where": cache["where"]}


def step_syncs(overrides: list[str]) -> dict:
    import torch

    from vit.cli import compose
    from vit.instantiate import with_class_count
    from vit.training import trainer

    cfg = with_class_count(compose("train", [*overrides, "trainer.log_every=1000"]))
    with tempfile.TemporaryDirectory() as folder:
        stop = trainer.StopRequest()
        try:
            run = trainer.build(cfg, Path(folder), stop)
            run.net = run.model
            batches = trainer.prepared_batches(run, 0, 0)
            for step in range(3):  # warm up: allocator, kernels, the augmentation's tables
                trainer.train_step(run, *next(batches), step)
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    trainer.train_step(run, *next(batches), 3)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        finally:
            stop.restore()
    places = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    return {"syncs": len(places), "where": sorted(set(places))}


# --- the benchmark, the recipe, class folders ------------------------------------------------


def benchmark(out: Path, small: bool, timeout: float) -> dict:
    """scripts/benchmark.py on its default model (vit_cifar, 32 px), eager and compiled, with MFU."""
    tiny = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2", "benchmark.compile=false"]
    sizes = (
        [*tiny, "benchmark.steps=1", "benchmark.rounds=1", "benchmark.warmup=1"]
        if small
        else ["benchmark.compile=both"]
    )
    folder = out / "benchmark"
    script(["scripts/benchmark.py", "benchmark.compare=false", f"benchmark.out_dir={folder}", *sizes], timeout, ROOT)
    report = json.loads(max(folder.glob("benchmark_*.json")).read_text())
    keys = ("train_images_per_sec", "mfu", "attention_kernel", "precision")
    return {
        "setting": report["setting"]["device"],
        **{r["variant"]: {k: r[k] for k in keys} for r in report["results"]},
    }


def fashion_mnist_found() -> bool:
    """As `data=fashion_mnist` looks for it (data/, or Debian's package), never downloading."""
    import hydra

    from vit.cli import compose
    from vit.training.data import DataError

    data = compose("train", ["data=fashion_mnist", f"data.root={ROOT / 'data'}", "data.download=false"]).data
    try:
        hydra.utils.instantiate(data).folder()
        return True
    except DataError:
        return False


def recipe(out: Path, small: bool, timeout: float) -> dict | Check:
    """`experiment=fashion_mnist` to its accuracy, with the wall time of the whole process."""
    if not fashion_mnist_found():
        return Check(
            "fashion-mnist recipe", "skipped", "Fashion-MNIST not found (apt-get install dataset-fashion-mnist)"
        )
    run_dir = out / "fashion_mnist"
    shutil.rmtree(run_dir, ignore_errors=True)
    smaller = ["trainer.epochs=1", "data.train_subset=1000", "trainer.compile=false"] if small else []
    started = time.time()
    script(["scripts/train.py", "experiment=fashion_mnist", f"hydra.run.dir={run_dir}", *smaller], timeout, ROOT)
    summary = json.loads((run_dir / "summary.json").read_text())
    keys = ("final_val_acc1", "best_val_acc1", "epochs", "train_images_per_sec", "first_step_s", "device", "precision")
    return {"wall_s": time.time() - started, **{k: summary[k] for k in keys}}


def class_folders(out: Path, small: bool, timeout: float) -> dict:
    """vit_tiny and vit_small at 224 px on class folders of 500x375 JPEGs, fed by PIL in loading
    processes and by the decoded cache (data.cache=true): images/s and the share of time the
    step waited for data, in the second epoch; and the loaders alone, per core."""
    from vit.studies.class_folders import make_jpegs

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpegs(Path(tmp) / "jpegs", 2 if small else 10, (8, 2) if small else (256, 16))
        small_model = ["data.num_workers=1", "model.depth=1", "model.embed_dim=32"]
        small_model += ["model.num_heads=2", "model.patch_size=8"]
        size = ["data.img_size=32", "data.batch_size=4"] if small else []
        for model in ["vit_tiny"] if small else ["vit_tiny", "vit_small"]:
            for loader, cache in (("PIL", "false"), ("cache", "true")):
                run_dir = out / f"class_folders_{model}_{loader}"
                shutil.rmtree(run_dir, ignore_errors=True)
                args = ["scripts/train.py", "data=imagefolder", f"data.root={root}", f"model={model}", *size]
                args += [f"data.cache={cache}", f"data.cache_dir={tmp}/cache", "trainer.epochs=2"]
                args += small_model if small else ["trainer.compile=true"]
                script([*args, f"hydra.run.dir={run_dir}"], timeout, ROOT)
                last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
                results[f"{model} {loader} images/s"] = last["images_per_sec"]
                results[f"{model} {loader} data wait"] = last["data_wait_frac"]
        bench = ["scripts/benchmark.py", "data=imagefolder", f"data.root={root}", *(size or ["data.img_size=224"])]
        script([*bench, "benchmark.loader=only", f"benchmark.out_dir={out / 'loaders'}"], timeout, ROOT)
    report = json.loads(max((out / "loaders").glob("loaders_*.json")).read_text())
    for row in report["rows"]:
        results[f"{row['loader']}, images/s per core"] = row["images_per_sec_per_core"]
    return results


# --- the report ---------------------------------------------------------------------------------


def markdown(title: str, machine: dict, checks: list[Check]) -> str:
    lines = [f"# {title}", "", ", ".join(f"{k} {v}" for k, v in machine.items() if v is not None), ""]
    lines += ["| check | status | seconds | result |", "| --- | --- | --- | --- |"]
    for c in checks:
        summary = c.note or "; ".join(f"{k}: {cell(v)}" for k, v in c.results.items() if not isinstance(v, dict))
        lines.append(f"| {c.name} | {c.status} | {c.seconds:.0f} | {summary} |")
    for c in checks:
        tables = {k: v for k, v in c.results.items() if isinstance(v, dict)}
        if tables:
            columns = list(dict.fromkeys(col for row in tables.values() for col in row))
            lines += ["", f"## {c.name}", "", "| | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
            lines += [
                f"| {k} | " + " | ".join(cell(row.get(col)) for col in columns) + " |" for k, row in tables.items()
            ]
    return "\n".join(lines) + "\n"


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return "–" if value is None else str(value)
