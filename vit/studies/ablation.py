"""An ablation: a grid of training runs, an evaluation of every checkpoint, and the tables a
report is made of.

The runs' folders are fixed (`outputs/ablations/NAME/runs/<scheme>_seed<k>`) and every run
trains with `resume=auto`, so running the same ablation again trains nothing that finished,
continues what was cut short, and retries what failed. Each finished run is also committed as
a row of `results/ablations/NAME.jsonl` (vit/studies/results.py), which stands in for its
folder on a machine that does not have it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from omegaconf import DictConfig

from vit import registry
from vit.studies import results
from vit.studies.sweep_stop import SweepStop
from vit.threads import torch_threads

ROOT = Path(__file__).resolve().parents[2]
SAVED = (128 + signal.SIGTERM, 128 + signal.SIGINT)  # scripts/train.py's exit once a signal made it save


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
    cpu: str = ""  # the CPU that trained it (results.machine()): a pair of runs must share one

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


def pair_of(point: dict[str, str]) -> tuple:
    """What the runs of a pair share: the scheme and the seed (they differ in the varied keys)."""
    return point.get("model/pos_embed"), point.get("seed")


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


def run_sweep(cfg: DictConfig, out: Path, extra: list[str], jobs: int = 1, book: Book | None = None) -> int:
    """Commit every finished but uncommitted run first; then train every run that has neither
    finished in its folder nor a committed row in `book`, `jobs` at a time, each as its own
    `scripts/train.py`; with a Hydra launcher in `extra` (a cluster), the whole grid as one
    multirun instead. Each run that finishes is evaluated
    and its row committed at once (`book`). Returns non-zero when a run failed; the others
    still ran."""
    runs_dir = out / "runs"
    points = grid_points(sweep_order(cfg))
    done = [p for p in points if (runs_dir / folder_name(p) / "summary.json").exists()]
    for point in done:  # finished before (another sitting, or trained by hand): commit it now
        if book is not None and book.row(point) is None:
            book.commit(point)
    todo = [p for p in points if p not in done]
    committed = [p for p in todo if book is not None and book.row(p) is not None]
    todo = [p for p in todo if p not in committed]
    if committed:
        files = sorted({str(book.ledger.file_of(book.keys[folder_name(p)], book.machine_of(p))) for p in committed})
        where = f"{', '.join(files)} without a folder here"
        print(f"{len(committed)} runs of {cfg.name} are committed in {where}; not training them again")
    if not todo:
        print(f"all {len(points)} runs of {cfg.name} have finished; nothing to train")
        return 0
    print(f"{len(todo)} of {len(points)} runs of {cfg.name} to train" + (f", {jobs} at a time" if jobs > 1 else ""))
    if book is not None and book.same_machine:
        print(f"(a pair's runs share one machine: the pairs whole on none train here, on {book.here or 'this one'})")
    if any(a.lstrip("+~").startswith("hydra/launcher") for a in extra):
        return subprocess.run(sweep_command(cfg, runs_dir, extra)).returncode
    return run_in_parallel(
        [run_command(cfg, p, runs_dir, extra) for p in todo],
        [runs_dir / folder_name(p) for p in todo],
        jobs,
        finished=None if book is None else [partial(book.commit, p) for p in todo],
    )


def run_in_parallel(
    commands: list[list[str]], folders: list[Path], jobs: int, finished: list[Callable[[], None]] | None = None
) -> int:
    """Each command in its own process, `jobs` at a time, each with an equal share of the CPU
    threads (two one-thread runs on 2 cores train more images per second than one two-thread
    run); with jobs > 1 a run's console goes to console.log in its folder. A line per run says
    how it ended, and `finished[i]()` is called as run i finishes, one at a time in a queue
    of its own, so that the next run starts training while a finished one is evaluated.
    Returns 1 if any failed; 128 + the signal if SIGTERM or Ctrl-C stopped the sweep (the
    runs under way saved, the rest did not start, an evaluation under way finished and those
    not begun were left to the next sitting)."""
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    # the evaluations here share the cores with the runs training
    shared = torch_threads(threads) if finished and jobs > 1 else contextlib.nullcontext()
    numbers = [f"{i}/{len(commands)}" for i in range(1, len(commands) + 1)]
    evaluated: list[Future] = []
    with shared, SweepStop() as stop, ThreadPoolExecutor(1) as evaluations, ThreadPoolExecutor(jobs) as pool:
        one = partial(run_logged, env=env, quiet=jobs > 1, stop=stop)

        def queue(evaluate: Callable[[], None]) -> None:
            evaluated.append(evaluations.submit(evaluate))

        queued = [f and partial(queue, f) for f in finished or []]
        codes = list(pool.map(one, commands, folders, numbers, queued or [None] * len(commands)))
        if stop.signum:  # the one under way ends; the next sitting evaluates the others first
            evaluations.shutdown(wait=False, cancel_futures=True)
    for evaluation in evaluated:
        if not evaluation.cancelled():
            evaluation.result()  # an error while evaluating a finished run is raised here
    if stop.signum:
        saved, left = sum(c in SAVED for c in codes), codes.count(None)
        unevaluated = sum(e.cancelled() for e in evaluated)
        print(
            f"stopped by signal {stop.signum} (runs: {saved} saved where they were, {left} not started, "
            f"{unevaluated} finished but not evaluated); the same command goes on from there",
            flush=True,
        )
        return 128 + stop.signum
    return int(any(codes))


def stop_with_parent() -> None:
    """In a run's process, before it starts: SIGTERM when the ablation dies, even by kill -9,
    so that the run saves and ends instead of training on, holding its folder, unwatched."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def run_logged(
    command: list[str],
    folder: Path,
    number: str,
    finished: Callable[[], None] | None,
    env: dict,
    quiet: bool,
    stop: SweepStop,
) -> int | None:
    """The run's exit code, or None if the sweep was stopped before it started."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(folder / "console.log", "a") if quiet else contextlib.nullcontext() as console:
        stderr = subprocess.STDOUT if quiet else None
        process = stop.start(command, stdout=console, stderr=stderr, env=env, preexec_fn=stop_with_parent)
        if process is None:
            return None
        code = stop.wait(process)
    minutes = (time.time() - started) / 60
    if code == 0 and (folder / "summary.json").exists():
        final = json.loads((folder / "summary.json").read_text())["final_val_acc1"]
        print(f"trained {number}: {folder.name}, final acc1 {final:.2f} ({minutes:.1f} min)", flush=True)
        if finished is not None:
            finished()
    elif stop.signum and code in SAVED:
        print(f"stopped {number}: {folder.name} after {minutes:.1f} min, saved where it was", flush=True)
    else:
        where = f"; see {folder / 'console.log'}" if quiet else ""
        print(f"failed {number}: {folder.name} (exit {code}{where})", flush=True)
    return code


class Book:
    """An ablation's committed rows (`results.Ledger`) and the config key each grid point must
    have to count: a run is recorded once it is finished and evaluated, and a committed row
    stands in for a run folder this machine does not have. With `same_machine: true` in the
    ablation's config the runs of a pair (a scheme and seed at every value of the varied keys)
    must share one machine: the same seed on two CPUs parts as far as two seeds, so a pair
    trained on two machines pairs nothing. A pair whole on some machine is taken from it (the
    one with the most whole pairs, then this one); any other pair is this machine's to train."""

    def __init__(
        self, cfg: DictConfig, out: Path, ledger, keys: dict[str, str], device: str = "cpu", configs: dict | None = None
    ):
        self.cfg, self.out, self.ledger, self.keys, self.device = cfg, out, ledger, keys, device
        self.configs = configs or {}  # folder name -> the composed config its run must have
        self._evaluating = threading.Lock()  # one evaluation at a time beside the training runs
        self.here = results.machine()
        self.same_machine = bool(cfg.get("same_machine", False))
        self.pairs: dict[tuple, list[dict[str, str]]] = {}
        for point in grid_points(grid_of(cfg)):
            self.pairs.setdefault(pair_of(point), []).append(point)
        self.shown: Counter = Counter()  # the report's runs per machine, and the runs it left out
        self.left_out: Counter = Counter()

    def row(self, point: dict[str, str]) -> dict | None:
        """The committed row that stands in for the point's run (None: it is to train here)."""
        return self.ledger.get(self.keys[folder_name(point)], self.machine_of(point))

    def machine_of(self, point: dict[str, str]) -> str | None:
        """Whose run stands for the point: any machine's (None) unless `same_machine`; else a
        machine its pair is whole on (the one with the most whole pairs, then this one, then
        by name: the same choice every time), and this one where the pair is whole on none."""
        if not self.same_machine:
            return None
        trained = self.trained()
        whole = Counter(cpu for pair in self.pairs.values() for cpu in self.whole_on(pair, trained))
        candidates = self.whole_on(self.pairs[pair_of(point)], trained)
        return max(candidates, key=lambda cpu: (whole[cpu], cpu == self.here, cpu), default=self.here)

    def trained(self) -> dict[str, set[str]]:
        """Each grid point's folder name -> the machines with a committed row of its config."""
        names = (folder_name(p) for pair in self.pairs.values() for p in pair)
        return {name: {row.get("cpu", "") for row in self.ledger.rows_of(self.keys[name])} for name in names}

    @staticmethod
    def whole_on(pair: list[dict[str, str]], trained: dict[str, set[str]]) -> set[str]:
        return set.intersection(*(trained[folder_name(p)] for p in pair))

    def commit(self, point: dict[str, str]) -> Run:
        """The point's run from its folder, evaluated if it was not, and its row added when the
        folder's own config is the grid's (a folder left by other settings is not committed)."""
        run = load_run(point, self.out)
        if run.status != "finished":
            return run
        key = self.keys[folder_name(point)]
        self.check_settings(run, key)
        if not run.evaluation:
            with self._evaluating:
                evaluate_run(run, self.cfg.resolutions, self.device, announce=True)
        if self.ledger.get(key, self.here if self.same_machine else None) is None:
            row = results.make_row(self.cfg.name, run.folder.name, point, key, run.summary, run.evaluation, run.history)
            self.ledger.add(row)
        return run

    def show(self, runs: list[Run]) -> list[Run]:
        """What the report shows for each grid point (`shown_run`), counting the runs shown and
        the other machines' rows left out, machine by machine."""
        shown = [self.shown_run(run) for run in runs]
        self.shown = Counter(r.cpu for r in shown if r.status == "finished")
        self.left_out = Counter()
        for run in shown:
            rows = self.ledger.rows_of(self.keys[run.folder.name])
            others = [r.get("cpu", "") for r in rows]
            self.left_out.update(cpu for cpu in others if run.status != "finished" or cpu != run.cpu)
        return shown

    def shown_run(self, run: Run) -> Run:
        """The run in its folder if it finished on the machine whose run stands for the point,
        else that machine's committed row, else the run as it stands here (or missing, when
        another machine's stands for it)."""
        cpu = self.machine_of(run.point)
        if run.status == "finished" and cpu in (None, run.cpu):
            return run
        row = self.ledger.get(self.keys[run.folder.name], cpu)
        if row is not None:
            return run_from_row(run.point, run.folder, row)
        return run if cpu in (None, self.here) else Run(run.point, run.folder)

    def machine_note(self) -> str:
        """The report's line on which machines trained the runs it shows (empty unless
        `same_machine`)."""
        if not self.same_machine:
            return ""
        why = "the same seed on two CPUs can part as far as two seeds, so a pair must share one"
        named = {cpu or "a machine not named": n for cpu, n in self.shown.items()}
        if len(named) > 1:
            note = f"Each pair here trained on one machine ({why}): " + ", ".join(
                f"{n} runs on {cpu}" for cpu, n in sorted(named.items(), key=lambda c: -c[1])
            )
        else:
            one = next(iter(named), self.here or "one that was not named")
            note = f"Every run here trained on one machine, {one}: {why}"
        others = [f"{n} runs of {cpu or 'a machine not named'}" for cpu, n in self.left_out.items()]
        return note + "." + (f" Left out: {', '.join(others)}." if others else "")

    def check_settings(self, run: Run, key: str) -> None:
        """A finished folder trained with other settings than the grid's (by hand, or before
        the ablation's config changed) would put another experiment's numbers in the table."""
        stored = results.stored_config(run.folder)
        if stored is not None and results.config_key(stored) == key:
            return
        expected = self.configs.get(run.folder.name)
        if stored is None:
            why = "it holds no .hydra/config.yaml to tell its settings"
        elif expected is not None:
            why = f"it was trained with {results.first_difference(stored, expected)}"
        else:
            why = "its .hydra/config.yaml differs from the ablation's"
        raise results.ResultsError(f"{run.folder} is not a run of ablation {self.cfg.name}: {why}; {results.MOVE_AWAY}")


def collect(cfg: DictConfig, out: Path, device: str = "cpu", book: Book | None = None) -> list[Run]:
    """Every grid point with its status, summary, per-epoch history and evaluation: from its
    folder (evaluated now, by the code behind scripts/eval.py, if it was not, with a line per
    run: the evaluation of a long ablation takes minutes), else from its committed row."""
    points, runs = grid_points(grid_of(cfg)), []
    for point in points:
        run = load_run(point, out) if book is None else book.commit(point)
        if run.status == "finished" and not run.evaluation:
            evaluate_run(run, cfg.resolutions, device, announce=True)
        runs.append(run)
    if book is None:
        return runs
    return book.show(runs)


def run_from_row(point: dict[str, str], folder: Path, row: dict) -> Run:
    """A finished run as its committed row holds it (no weights: its folder may not exist)."""
    return Run(
        point,
        folder,
        "finished",
        summary=row["summary"],
        evaluation=row["evaluation"],
        history=row["history"],
        cpu=row.get("cpu", ""),
    )


def load_run(point: dict[str, str], out: Path) -> Run:
    """A grid point as its folder holds it; `evaluation` is empty when eval.json is missing or
    older than the run's summary."""
    run = Run(point, out / "runs" / folder_name(point))
    summary, error, evaluation = (run.folder / name for name in ("summary.json", "error.txt", "eval.json"))
    if summary.exists():
        rebuild = "delete it, and the ablation rebuilds it from the run's last checkpoint"
        run.status, run.summary = "finished", read_json(summary, rebuild)
        run.history = read_json_lines(run.folder / "metrics.jsonl")
        run.cpu = results.machine()  # run folders stay on the machine that trained them
        if evaluation.exists() and evaluation.stat().st_mtime >= summary.stat().st_mtime:
            with contextlib.suppress(results.ResultsError):  # a damaged one is evaluated again
                run.evaluation = read_json(evaluation, "")
    elif error.exists():
        run.status = "failed"
        run.error = error.read_text().strip().splitlines()[-1]
    elif run.folder.exists():
        run.status, run.error = "failed", "not finished (no summary.json, no error.txt): still training, or stopped"
    return run


def read_json(path: Path, advice: str) -> dict:
    """A run's JSON file; a damaged one is a ResultsError naming it, with `advice`."""
    try:
        value = json.loads(path.read_text())
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise results.ResultsError(f"{path} is damaged ({str(e).splitlines()[0]}): {advice}") from None
    return value


def read_json_lines(path: Path) -> list[dict]:
    """A run's metrics.jsonl; a missing or damaged one is a ResultsError naming it."""
    if not path.exists():
        raise results.ResultsError(f"{path} is missing beside the run's summary.json: {results.MOVE_AWAY}")
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise results.ResultsError(f"{path}, line {number}, is damaged ({e}): {results.MOVE_AWAY}") from None
    return rows


def evaluate_run(run: Run, resolutions, device: str, announce: bool = False) -> None:
    """Evaluate the run's last.pt into eval.json (written atomically: a kill leaves none); with
    `announce`, a line saying so (an evaluation takes a while)."""
    from vit.studies.evaluation import evaluate_checkpoint  # torch, only once there is something to evaluate

    started = time.time()
    if announce:
        print(f"evaluating {run.folder.name} ...", flush=True)  # whole lines: runs may end side by side
    sizes = list(resolutions) if resolutions else None
    run.evaluation = evaluate_checkpoint(run.folder / "checkpoints" / "last.pt", sizes, device)
    partial_file = run.folder / "eval.json.tmp"
    partial_file.write_text(json.dumps(run.evaluation, indent=2) + "\n")
    partial_file.replace(run.folder / "eval.json")
    if announce:
        e = run.evaluation
        scores = f"acc1 {e['acc1']:.2f}, shuffled {e['shuffled_acc1']:.2f}"
        print(f"evaluated {run.folder.name}: {scores} ({time.time() - started:.0f} s)", flush=True)


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
    other grid values) both finished: mean difference in points, its 95% interval, whether
    the interval excludes zero (resolved), and whether that holds after Holm's correction for
    all the comparisons against the same baseline (holm)."""
    finished = [r for r in runs if r.status == "finished"]

    def pairing(run: Run) -> tuple:  # what two runs must share to be a pair: all but the scheme, and a CPU
        return run.cpu, *sorted((k, v) for k, v in run.point.items() if k != "model/pos_embed")

    rows = []
    for baseline in [b for b in registry.BASELINES if any(r.scheme == b for r in finished)]:
        base = {pairing(r): r.summary[metric] for r in finished if r.scheme == baseline}
        for label in dict.fromkeys(r.label for r in finished if r.scheme != baseline):
            diffs = [r.summary[metric] - base[pairing(r)] for r in finished if r.label == label and pairing(r) in base]
            if diffs:
                rows.append({"label": label, "baseline": baseline, **difference(diffs)})
        holm([r for r in rows if r["baseline"] == baseline])
    return rows


def varied_differences(runs: list[Run], metric: str = "final_val_acc1") -> list[dict]:
    """Along each varied grid key (not the scheme, not the seed), e.g. model.pool: each later
    value against the key's first, for each scheme, run by run over the seeds both finished;
    with more than one scheme, then over every scheme's pairs together ("pooled": the change
    averaged over these schemes, a summary outside the schemes' Holm family)."""
    finished = [r for r in runs if r.status == "finished"]
    rows = []
    for key in dict.fromkeys(k for r in runs for k in r.point if k not in ("model/pos_embed", "seed")):
        values = list(dict.fromkeys(r.point[key] for r in runs))

        def rest(run: Run, key: str = key) -> tuple:  # what a pair shares: all but this key, and a CPU
            return run.cpu, *sorted((k, v) for k, v in run.point.items() if k != key)

        base = {rest(r): r.summary[metric] for r in finished if r.point[key] == values[0]}
        for value in values[1:]:
            groups: dict[str, list[float]] = {}
            for run in (r for r in finished if r.point[key] == value and rest(r) in base):
                others = [f"{short(k)}={v}" for k, v in run.point.items() if k not in (key, "model/pos_embed", "seed")]
                label = " ".join([run.scheme, *others])
                groups.setdefault(label, []).append(run.summary[metric] - base[rest(run)])
            along = {"key": short(key), "value": value, "reference": values[0]}
            family = [{"label": label, **along, **difference(diffs)} for label, diffs in groups.items()]
            holm(family)
            rows += family
            if len(groups) > 1:
                pooled = [d for diffs in groups.values() for d in diffs]
                summary = {**difference(pooled), "above": sum(d > 0 for d in pooled), "pooled": True}
                rows.append({"label": "every scheme", **along, **summary})
    return rows


def difference(diffs: list[float]) -> dict:
    """Paired differences summed up: how many, their mean, its 95% interval, whether that
    interval excludes zero, and the two-sided p of the paired t-test (nan below 2 pairs)."""
    mean, half = statistics.fmean(diffs), ci95(diffs)
    resolved = len(diffs) > 1 and abs(mean) > half
    return {"n": len(diffs), "mean": mean, "ci95": half, "resolved": resolved, "p": p_value(diffs)}


def p_value(diffs: list[float]) -> float:
    """Two-sided p of Student's t-test that the mean difference is zero."""
    if len(diffs) < 2:
        return float("nan")
    if statistics.stdev(diffs) == 0:  # identical differences: certain, unless all zero (scipy gives nan)
        return 1.0 if diffs[0] == 0 else 0.0
    from scipy import stats

    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def holm(rows: list[dict], alpha: float = 0.05) -> None:
    """Mark which comparisons of one family stay resolved after Holm's correction (family-wise
    error alpha): with m tests, the k-th smallest p must be at most alpha / (m - k + 1), and
    the first that is not ends the run. Each row gains "holm": bool."""
    tested = sorted((r for r in rows if r["n"] > 1), key=lambda r: r["p"])
    passing = True
    for k, row in enumerate(tested):
        passing = passing and row["p"] <= alpha / (len(tested) - k)
        row["holm"] = passing
    for row in rows:
        row.setdefault("holm", False)
