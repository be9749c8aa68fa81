"""Compare positional schemes: train a grid of runs, evaluate them, write a report.

    python scripts/ablate.py                                    # ablation=quick: offline, a few minutes
    python scripts/ablate.py ablation=fmnist                    # real images, every scheme x 3 seeds, 2 cores
    python scripts/ablate.py ablation=fmnist_full jobs=2        # two runs at a time, one CPU thread each
    python scripts/ablate.py ablation=fmnist_full train=false   # report what has finished so far
    python scripts/ablate.py ablation=cifar10                   # every scheme x 3 seeds, for a GPU
    python scripts/ablate.py ablation=cifar10 trainer.epochs=50 # any training override, for every run
    python scripts/ablate.py ablation=cifar10 hydra/launcher=submitit_slurm   # on a cluster

Arguments that start with `ablation`, `device`, `jobs`, `out_dir` or `train` shape the ablation; all others
go to every training run. Writes outputs/ablations/NAME/ (report.md and the rest). Running
it again trains only what has not finished.
"""

import shlex
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from vit.cli import ConfigError, check_config, compose, fail
from vit.studies.ablation import collect, run_sweep

OWN = ("ablation", "device", "jobs", "out_dir", "train")


def main(argv: list[str]) -> int:
    own = [a for a in argv if a.split("=")[0].split(".")[0].lstrip("+~") in OWN]
    extra = [a for a in argv if a not in own]
    try:
        cfg = compose("ablate", overrides=own)
        shared = [*cfg.ablation.train, *(a for a in extra if not a.lstrip("+~").startswith("hydra"))]
        check_config(compose("train", shared))  # what every run shares, checked before any trains
        check_jobs(cfg.jobs, extra)
    except (HydraException, OmegaConfBaseException, ConfigError) as e:
        fail(str(e).splitlines()[0])
    ablation = cfg.ablation
    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    code = run_sweep(ablation, out, extra, cfg.jobs) if cfg.train else 0
    import torch

    from vit.studies.report import write_report

    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    runs = collect(ablation, out, "cpu" if device == "auto" else device)
    report = write_report(ablation.name, runs, out, shlex.join(["python", "scripts/ablate.py", *argv]))
    failed = [r for r in runs if r.status != "finished"]
    print(f"report: {report}" + (f"  ({len(failed)} of {len(runs)} runs did not finish)" if failed else ""))
    return 1 if cfg.train and (failed or code) else 0  # train=false: a look, not a verdict


def check_jobs(jobs, extra: list[str]) -> None:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"jobs={jobs}: give how many runs train at a time, 1 or more")
    if jobs > 1 and any(a.lstrip("+~").startswith("hydra/launcher") for a in extra):
        raise ConfigError("jobs runs the grid on this machine; with a Hydra launcher, leave jobs at 1")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
