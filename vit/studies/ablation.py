"""An ablation: a grid of training runs through one Hydra multirun, then an evaluation of
every checkpoint and the tables a report is made of.

The sweep directory is fixed (`outputs/ablations/NAME/runs`) and every job runs with
`resume=auto`, so running the same ablation again trains nothing that finished, continues
what was cut short, and retries what failed.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from omegaconf import DictConfig

from vit import registry

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    """One point of the grid and what became of it."""

    point: dict[str, str]  # grid key -> value, e.g. {"model/pos_embed": "rope_2d", "seed": "0"}
    folder: Path
    status: str = "missing"  # finished | failed | missing
    error: str = ""
    summary: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @property
    def scheme(self) -> str:
        return self.point.get("model/pos_embed", "learned_1d")

    @property
    def seed(self) -> str:
        return self.point.get("seed", "0")

    @property
    def label(self) -> str:
        """The scheme plus any grid value other than the seed: what seeds are averaged over."""
        extra = [f"{short(k)}={v}" for k, v in self.point.items() if k not in ("model/pos_embed", "seed")]
        return " ".join([self.scheme, *extra])


def short(key: str) -> str:
    return key.split("/")[-1].split(".")[-1]


def folder_name(point: dict[str, str]) -> str:
    """rope_2d_seed0, or gap_rope_2d_seed0 with more grid keys: no characters to quote."""
    parts = [f"{short(k)}-{v}" for k, v in point.items() if k not in ("model/pos_embed", "seed")]
    return "_".join([*parts, point.get("model/pos_embed", "learned_1d"), f"seed{point.get('seed', 0)}"])


def grid_of(cfg: DictConfig) -> dict[str, list]:
    """{override key: values}: the schemes (`all`: every one in the registry), then any other
    varied key, then the seeds."""
    schemes = registry.schemes() if cfg.schemes == "all" else list(cfg.schemes)
    return {"model/pos_embed": schemes, **{k: list(v) for k, v in cfg.vary.items()}, "seed": list(cfg.seeds)}


def grid_points(grid: dict[str, list]) -> list[dict[str, str]]:
    keys = list(grid)
    return [dict(zip(keys, map(str, values), strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def subdir_template(grid: dict[str, list]) -> str:
    """Hydra's `hydra.sweep.subdir` that names each job's folder like `folder_name`."""

    def value(key: str) -> str:
        return f"${{hydra:runtime.choices.{key}}}" if "/" in key else f"${{{key}}}"

    parts = [f"{short(k)}-{value(k)}" for k in grid if k not in ("model/pos_embed", "seed")]
    scheme = value("model/pos_embed") if "model/pos_embed" in grid else "learned_1d"
    seed = value("seed") if "seed" in grid else "0"
    return "_".join([*parts, scheme, f"seed{seed}"])


def sweep_order(cfg: DictConfig) -> dict[str, list]:
    """The grid with the seeds first: Hydra's sweeper varies the last key fastest, so every
    scheme's first seed trains before any second seed, and a long ablation cut short still
    compares all schemes."""
    return dict(sorted(grid_of(cfg).items(), key=lambda item: item[0] != "seed"))


def sweep_command(cfg: DictConfig, runs_dir: Path, extra: list[str]) -> list[str]:
    """`scripts/train.py -m` over the grid; `extra` may pick a Hydra launcher, e.g.
    `hydra/launcher=submitit_slurm`, or override any training key for every run."""
    grid = [f"{key}={','.join(map(str, values))}" for key, values in sweep_order(cfg).items()]
    return [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "-m",
        *cfg.train,
        *extra,
        *grid,
        "resume=auto",
        f"hydra.sweep.dir={runs_dir}",
        f"hydra.sweep.subdir='{subdir_template(grid_of(cfg))}'",
    ]


def run_command(cfg: DictConfig, point: dict[str, str], runs_dir: Path, extra: list[str]) -> list[str]:
    """One grid point as a single `scripts/train.py` run, into the folder a sweep job would use."""
    return [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        *cfg.train,
        *extra,
        *(f"{key}={value}" for key, value in point.items()),
        "resume=auto",
        f"hydra.run.dir={runs_dir / folder_name(point)}",
    ]


def run_sweep(cfg: DictConfig, out: Path, extra: list[str], jobs: int = 1) -> int:
    """Train every run that has not finished, `jobs` at a time. Returns the sweep's exit code
    (non-zero when a job failed; the others still ran)."""
    runs_dir = out / "runs"
    points = grid_points(sweep_order(cfg))
    todo = [p for p in points if not (runs_dir / folder_name(p) / "summary.json").exists()]
    if not todo:
        print(f"all {len(points)} runs of {cfg.name} have finished; nothing to train")
        return 0
    print(f"{len(todo)} of {len(points)} runs of {cfg.name} to train" + (f", {jobs} at a time" if jobs > 1 else ""))
    if jobs == 1:
        return subprocess.run(sweep_command(cfg, runs_dir, extra)).returncode
    return run_in_parallel(
        [run_command(cfg, p, runs_dir, extra) for p in todo], [runs_dir / folder_name(p) for p in todo], jobs
    )


def run_in_parallel(commands: list[list[str]], folders: list[Path], jobs: int) -> int:
    """Each command in its own process, `jobs` at a time, each with an equal share of the CPU
    threads (two one-thread runs on 2 cores train more images per second than one two-thread
    run); a run's console goes to console.log in its folder, and a line per run says how it
    ended. Returns 1 if any run failed."""
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    one = partial(run_logged, env=env)
    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(one, commands, folders, [f"{i}/{len(commands)}" for i in range(1, len(commands) + 1)]))
    return int(any(codes))


def run_logged(command: list[str], folder: Path, number: str, env: dict[str, str]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(folder / "console.log", "a") as console:
        code = subprocess.run(command, stdout=console, stderr=subprocess.STDOUT, env=env).returncode
    minutes = (time.time() - started) / 60
    if code == 0 and (folder / "summary.json").exists():
        final = json.loads((folder / "summary.json").read_text())["final_val_acc1"]
        print(f"trained {number}: {folder.name}, final acc1 {final:.2f} ({minutes:.1f} min)", flush=True)
    else:
        print(f"failed {number}: {folder.name} (exit {code}; see {folder / 'console.log'})", flush=True)
    return code


def collect(cfg: DictConfig, out: Path, device: str = "cpu") -> list[Run]:
    """Every grid point with its status, summary, per-epoch history and evaluation
    (made now, by the code behind scripts/eval.py, for checkpoints not yet evaluated, with
    a line per run: the evaluation of a long ablation takes minutes)."""
    runs = [load_run(point, out) for point in grid_points(grid_of(cfg))]
    todo = [run for run in runs if run.status == "finished" and not run.evaluation]
    for number, run in enumerate(todo, start=1):
        started = time.time()
        print(f"evaluating {number}/{len(todo)}: {run.folder.name} ...", end=" ", flush=True)
        evaluate_run(run, list(cfg.resolutions) if cfg.resolutions else None, device)
        e = run.evaluation
        print(f"acc1 {e['acc1']:.2f}, shuffled {e['shuffled_acc1']:.2f} ({time.time() - started:.0f} s)", flush=True)
    return runs


def load_run(point: dict[str, str], out: Path) -> Run:
    """A grid point as its folder holds it; `evaluation` is empty when eval.json is missing or
    older than the run's summary."""
    run = Run(point, out / "runs" / folder_name(point))
    summary, error, evaluation = (run.folder / name for name in ("summary.json", "error.txt", "eval.json"))
    if summary.exists():
        run.status, run.summary = "finished", json.loads(summary.read_text())
        run.history = [json.loads(line) for line in (run.folder / "metrics.jsonl").read_text().splitlines()]
        if evaluation.exists() and evaluation.stat().st_mtime >= summary.stat().st_mtime:
            run.evaluation = json.loads(evaluation.read_text())
    elif error.exists():
        run.status = "failed"
        run.error = error.read_text().strip().splitlines()[-1]
    elif run.folder.exists():
        run.status, run.error = "failed", "not finished (no summary.json, no error.txt): still training, or stopped"
    return run


def evaluate_run(run: Run, resolutions: list[int] | None, device: str) -> None:
    """Evaluate the run's last.pt into eval.json (written atomically: a kill leaves none)."""
    from vit.studies.evaluation import evaluate_checkpoint  # torch, only once there is something to evaluate

    run.evaluation = evaluate_checkpoint(run.folder / "checkpoints" / "last.pt", resolutions, device)
    partial = run.folder / "eval.json.tmp"
    partial.write_text(json.dumps(run.evaluation, indent=2) + "\n")
    partial.replace(run.folder / "eval.json")


def result_rows(runs: list[Run]) -> list[dict]:
    """results.csv: one row per run."""
    rows = []
    for run in runs:
        s, e = run.summary, run.evaluation
        row = {
            "scheme": run.scheme,
            **{short(k): v for k, v in run.point.items() if k != "model/pos_embed"},
            "seed": run.seed,
            "status": run.status,
            "params": s.get("params", ""),
            "scheme_params": e.get("pos_embed_params", ""),
            "best_acc1": s.get("best_val_acc1", ""),
            "final_acc1": s.get("final_val_acc1", ""),
            "eval_acc1": e.get("acc1", ""),
        }  # final_acc1 measured again from last.pt
        for size, acc in e.get("acc1_at", {}).items():
            row[f"acc1_at_{size}px"] = acc
        row.update(
            shuffled_acc1=e.get("shuffled_acc1", ""),
            images_per_sec=s.get("train_images_per_sec", ""),
            wall_time_s=s.get("wall_time_s", ""),
            error=run.error,
        )
        rows.append(row)
    return rows


def summary_rows(runs: list[Run]) -> list[dict]:
    """summary.csv: per label (scheme and any non-seed grid value), mean and standard
    deviation over the finished seeds of every number in results.csv."""
    rows = []
    finished = [r for r in runs if r.status == "finished"]
    for label in dict.fromkeys(r.label for r in runs):
        group = [row for r, row in zip(finished, result_rows(finished), strict=True) if r.label == label]
        row = {"label": label, "seeds": len(group)}
        numeric = [k for k in (group[0] if group else {}) if isinstance(group[0][k], (int, float)) and k != "seed"]
        for key in numeric:
            values = [g[key] for g in group]
            row[f"{key}_mean"] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{key}_ci95"] = ci95(values)
        rows.append(row)
    return rows


def ci95(values: list[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t); nan below 2 values."""
    if len(values) < 2:
        return float("nan")
    from scipy import stats

    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def paired_differences(runs: list[Run], metric: str = "final_val_acc1") -> list[dict]:
    """Each label against each baseline scheme (`none`, `learned_1d`), over the seeds (and
    other grid values) both finished: mean difference in points, its 95% interval, and
    whether the interval excludes zero (resolved)."""
    finished = [r for r in runs if r.status == "finished"]

    def pairing(run: Run) -> tuple:  # what two runs must share to be a pair: all but the scheme
        return tuple(sorted((k, v) for k, v in run.point.items() if k != "model/pos_embed"))

    rows = []
    for baseline in [b for b in registry.BASELINES if any(r.scheme == b for r in finished)]:
        base = {pairing(r): r.summary[metric] for r in finished if r.scheme == baseline}
        for label in dict.fromkeys(r.label for r in finished if r.scheme != baseline):
            diffs = [r.summary[metric] - base[pairing(r)] for r in finished if r.label == label and pairing(r) in base]
            if diffs:
                mean, half = statistics.fmean(diffs), ci95(diffs)
                resolved = len(diffs) > 1 and abs(mean) > half
                rows.append(
                    {
                        "label": label,
                        "baseline": baseline,
                        "n": len(diffs),
                        "mean": mean,
                        "ci95": half,
                        "resolved": resolved,
                    }
                )
    return rows
