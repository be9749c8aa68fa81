"""torchrun support: one process per device, DistributedDataParallel, one run directory.

`torchrun --nproc_per_node=N scripts/train.py ...` starts N processes with RANK, WORLD_SIZE
and LOCAL_RANK set. The process group is joined before Hydra composes the config, so that
rank 0 can hand every rank its launch time: they all resolve the same run directory, and
only rank 0 writes there.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

LAUNCH_TIME = "VIT_LAUNCH_TIME"


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Processes:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Processes()


def launch() -> None:
    """Call before Hydra: under torchrun, join the group and agree on the launch time."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        os.environ.setdefault(LAUNCH_TIME, repr(time.time()))
        return
    import torch  # only under torchrun: a single process answers a bad override without it
    import torch.distributed as dist

    if torch.cuda.is_available() and "trainer.device=cpu" not in sys.argv:  # NCCL for CUDA tensors, Gloo for CPU ones
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local_rank >= gpus:
            sys.exit(
                f"error: torchrun started more processes on this machine than its {gpus} GPU(s); "
                f"use --nproc_per_node={gpus}, or trainer.device=cpu"
            )
        torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl", **restart_store())
    else:
        dist.init_process_group(backend="gloo", **restart_store())
    stamp = [repr(time.time())]
    dist.broadcast_object_list(stamp, src=0, device=torch.device("cpu"))
    os.environ[LAUNCH_TIME] = stamp[0]
    if dist.get_rank() != 0:  # rank 0 alone writes the run's config and log files
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def restart_store() -> dict:
    """torchrun's agent keeps one store server for every restart of the group (pytorch#135712),
    so a restarted group would find the dead group's Gloo/NCCL addresses there and hang
    connecting to them. Each restart gets keys of its own: on one node every worker has the
    same restart count. On several nodes the counts can differ; there the launcher needs
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, which gives every restart a fresh store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}  # env:// as usual: rank 0 hosts a fresh store in each start
    import torch.distributed as dist

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if world > int(os.environ.get("LOCAL_WORLD_SIZE", world)) and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)):
        print(
            "warning: torchrun restarts on several nodes share one store; launch with "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, or a restarted group may hang",
            file=sys.stderr,
        )
    server = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
    prefix = f"vit/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return {"store": dist.PrefixStore(prefix, server), "rank": rank, "world_size": world}


def launch_time(fmt: str) -> str:
    """The `${launch_time:FORMAT}` resolver: like `${now:FORMAT}`, but the same on every rank."""
    return time.strftime(fmt, time.localtime(float(os.environ.get(LAUNCH_TIME, time.time()))))


def all_reduce_sum(tensor):
    import torch.distributed as dist

    if current().world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
