"""Compare positional schemes: train a grid of runs, evaluate them, write a report.

    python scripts/ablate.py                                    # ablation=quick: offline, a few minutes
    python scripts/ablate.py ablation=fmnist                    # real images, every scheme x 3 seeds, 2 cores
    python scripts/ablate.py ablation=fmnist_full jobs=2        # two runs at a time, one CPU thread each
    python scripts/ablate.py ablation=fmnist_full train=false   # report what has finished so far
    python scripts/ablate.py ablation=cifar10                   # every scheme x 3 seeds, for a GPU
    python scripts/ablate.py ablation=cifar10 trainer.epochs=50 # any training override, for every run
    python scripts/ablate.py ablation=cifar10 hydra/launcher=submitit_slurm   # on a cluster

The ablation's own keys are `ablation` (and `ablation.*`), `device`, `jobs`, `out_dir`,
`results_dir` and `train` (true/false, whether to train at all); every other argument, such as
`trainer.epochs=50`, goes to every training run. Writes outputs/ablations/NAME/ (report.md and
the rest), and commits each finished run's row to results/ablations/NAME.jsonl as it lands.
Running it again trains only what has neither finished here nor a committed row; with
`train=false` it rebuilds the report from what there is, a fresh clone's rows included.
"""

import shlex
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vit.cli import ConfigError, check_config, compose, fail
from vit.folder_lock import FolderInUse, folder_lock
from vit.studies.ablation import Book, collect, folder_name, grid_of, grid_points, run_sweep
from vit.studies.results import Ledger, ResultsError, config_key

OWN = ("ablation", "device", "jobs", "out_dir", "results_dir", "train")


def main(argv: list[str]) -> int:
    own = [a for a in argv if a.split("=")[0].split(".")[0].lstrip("+~") in OWN]
    extra = [a for a in argv if a not in own]
    try:
        cfg = compose("ablate", overrides=own)
        shared = [*cfg.ablation.train, *(a for a in extra if not a.lstrip("+~").startswith("hydra"))]
        check_config(compose("train", shared))  # what every run shares, checked before any trains
        check_jobs(cfg.jobs, extra)
        configs = run_configs(cfg.ablation, shared)
        ledger = Ledger.in_folder(Path(cfg.results_dir).resolve(), cfg.ablation.name)
    except (HydraException, OmegaConfBaseException, ConfigError, ResultsError) as e:
        fail(str(e).splitlines()[0])
    out = Path(cfg.out_dir).resolve()
    try:
        with folder_lock(out, "ablation folder"):  # one ablate.py per ablation; each run holds its own folder
            return ablate(cfg, out, argv, extra, ledger, configs)
    except (FolderInUse, ResultsError) as e:  # a folder in use; a damaged or foreign run folder
        fail(str(e), code=1)


def ablate(cfg, out: Path, argv: list[str], extra: list[str], ledger: Ledger, configs: dict[str, dict]) -> int:
    """Train what is missing, evaluate, commit the rows and write the report."""
    ablation = cfg.ablation
    import torch

    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    keys = {name: config_key(config) for name, config in configs.items()}
    book = Book(ablation, out, ledger, keys, "cpu" if device == "auto" else device, configs)
    code = run_sweep(ablation, out, extra, cfg.jobs, book) if cfg.train else 0
    if code > 128:  # stopped by a signal, which it has said: no report until the runs are back
        return code

    from vit.studies.report import write_report

    runs = collect(ablation, out, book.device, book)
    command = shlex.join(["python", "scripts/ablate.py", *argv])
    report = write_report(ablation.name, runs, out, command, book.machine_note())
    failed = [r for r in runs if r.status != "finished"]
    print(f"report: {report}" + (f"  ({len(failed)} of {len(runs)} runs did not finish)" if failed else ""))
    return 1 if cfg.train and (failed or code) else 0  # train=false: a look, not a verdict


def run_configs(ablation, shared: list[str]) -> dict[str, dict]:
    """Each grid point's folder name -> its composed training config, resolved: what its
    folder must hold, and (by its key) what its committed row must carry to stand in for it."""
    configs = {}
    for point in grid_points(grid_of(ablation)):
        composed = compose("train", [*shared, *(f"{k}={v}" for k, v in point.items())])
        configs[folder_name(point)] = OmegaConf.to_container(composed, resolve=True)
    return configs


def check_jobs(jobs, extra: list[str]) -> None:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"jobs={jobs}: give how many runs train at a time, 1 or more")
    if jobs > 1 and any(a.lstrip("+~").startswith("hydra/launcher") for a in extra):
        raise ConfigError("jobs runs the grid on this machine; with a Hydra launcher, leave jobs at 1")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
