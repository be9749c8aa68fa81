"""The training loop, in plain PyTorch: read `train` top to bottom, then each phase it calls.

    where the run stands   new, to resume (from the newest readable checkpoint), or finished
    build                  device, data, model, optimizer, schedule, Mixup
    restore                weights, optimizer, schedule, EMA, random streams, progress
    for each epoch:
        train_epoch        per batch: normalise on device -> [mixup] -> forward under autocast
                           -> backward -> clip -> step -> schedule -> EMA; every few steps: one
                           sync for the log, the NaN check and the stop check
        end_epoch          evaluate (and the EMA), save best.pt and last.pt, log the epoch
    summarize              summary.json and the HParams entry

SIGTERM / Ctrl-C saves last.pt at the next step and exits; `resume=auto` picks it up at
that exact batch, with the same random streams, so the weights end up bit-identical.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vit.checks import check_eval_every, check_tta
from vit.errors import ConfigError, TrainingError
from vit.folder_lock import folder_lock
from vit.instantiate import build_model, instantiate_group, with_class_count
from vit.training import distributed, precision
from vit.training.checkpoint import rng_state, save_checkpoint, set_rng_state
from vit.training.data.augment import normalize
from vit.training.device import choose_device
from vit.training.ema import WeightEma
from vit.training.hits import hits
from vit.training.optim import build_optimizer, load_optimizer_state, warmup_cosine, warmup_epochs
from vit.training.progress import Progress
from vit.training.resume import Start, where_run_stands
from vit.training.run_log import RunLog
from vit.training.seeds import numpy_seed, seed_for
from vit.training.stop_request import StopRequest
from vit.training.tta import scores
from vit.training.wait_clock import WaitClock

log = logging.getLogger("vit")


def train(
    cfg: DictConfig, run_dir: str | Path, choices: Mapping[str, str] | None = None, overrides: Sequence[str] = ()
) -> dict:
    """Train as `cfg` (the composed train config) says, in `run_dir`. `choices` (Hydra's
    group choices, e.g. {"model/pos_embed": "rope_2d"}) and `overrides` (the command line's)
    are recorded in summary.json. Returns the summary, or {"stopped": signal} if a signal
    stopped the run (last.pt saved)."""
    run_dir = Path(run_dir)
    # one command per run folder; torchrun's other ranks share their rank 0's
    holding = folder_lock(run_dir, "run folder") if distributed.current().is_main else contextlib.nullcontext()
    with holding:
        return train_in(cfg, run_dir, choices, overrides)


def train_in(cfg: DictConfig, run_dir: Path, choices: Mapping[str, str] | None, overrides: Sequence[str]) -> dict:
    """`train`, with the run folder held."""
    stop, runlog = StopRequest(), None
    try:
        cfg = with_class_count(cfg)
        start = where_run_stands(cfg, run_dir, distributed.current().world)
        if start.finished is not None:
            return start.finished
        run = build(cfg, run_dir, stop)
        progress = restore(run, start)
        runlog = RunLog(run_dir, run.procs.is_main, progress.step or None, progress.epoch)
        history = runlog.history()
        while progress.epoch < cfg.trainer.epochs:
            epoch = train_epoch(run, progress, runlog)
            if epoch is None:
                return {"stopped": stop.signum or signal.SIGTERM}
            history.append(end_epoch(run, progress, epoch, runlog))
        return summarize(run, progress, history, runlog, dict(choices or {}), list(overrides))
    finally:
        if runlog is not None:
            runlog.close()
        stop.restore()


# --- the state of a session ---------------------------------------------------------------


@dataclass
class Run:
    """What a session of training is built of. `net` is what the step calls (the model, in
    DistributedDataParallel and/or compiled); `model` is the plain one that is saved."""

    cfg: DictConfig
    run_dir: Path
    stop: StopRequest
    procs: distributed.Processes
    device: torch.device
    amp_dtype: torch.dtype | None
    data: Any
    train_batches: Any
    val_batches: Any
    mean: torch.Tensor
    std: torch.Tensor
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    mixup: Any
    criterion: nn.Module
    started: float  # time.time() when this session began
    net: nn.Module | None = None
    ema: Any = None
    first_step_s: float | None = None  # this session's first step: compilation, when compiled

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)

    def autocast(self):
        return precision.autocast(self.device, self.amp_dtype)


@dataclass
class EpochTraining:
    """What train_epoch hands to end_epoch."""

    loss_sum: torch.Tensor  # this process's training loss, summed over the epoch's steps
    session_s: float  # this session's training time in the epoch
    wait_s: float  # of which, waiting for batches
    started: float  # time.time() when this session began the epoch
    first_step_s: float = 0.0  # of which, the session's first step, if it was in this epoch


# --- build and restore ------------------------------------------------------------------------


def build(cfg: DictConfig, run_dir: Path, stop: StopRequest) -> Run:
    """Device, data, model, optimizer, schedule and Mixup. The model's initial weights come
    from the run's seed alone, so every process builds the same ones."""
    started, procs = time.time(), distributed.current()
    device = choose_device(cfg.trainer.device)
    amp_dtype = precision.choose_precision(cfg.trainer.precision, device)
    precision.allow_tf32()
    check_eval_every(cfg.trainer.eval_every)
    check_tta(cfg.trainer.tta)

    data = instantiate_group(cfg, "data")
    train_batches, val_batches = data.loaders(device, procs.rank, procs.world, cfg.seed)
    if len(train_batches) == 0:
        raise TrainingError(
            f"{train_batches.num_samples} training images make no batch of data.batch_size={data.batch_size}"
        )
    torch.manual_seed(seed_for("init", cfg.seed))
    model = build_model(cfg).to(device)
    torch.manual_seed(seed_for("process", cfg.seed, procs.rank))  # dropout and drop path: each its own
    np.random.seed(numpy_seed("process", cfg.seed, procs.rank))

    oc, steps_per_epoch = cfg.optim, len(train_batches)
    fused = device.type in ("cuda", "cpu")  # one kernel for every tensor: on a CPU 0.5 ms a step, not 1.9
    muon = (
        {
            "muon_momentum": oc.muon_momentum,
            "muon_lr_scale": oc.muon_lr_scale,
            "muon_ns_dtype": precision.ns_dtype(amp_dtype),  # no emulated bf16 in an fp32 run
        }
        if oc.name == "muon"
        else {}
    )
    optimizer = build_optimizer(model, oc.lr, oc.weight_decay, oc.betas, fused, oc.name, **muon)
    warmup = round(warmup_epochs(oc.warmup_epochs, cfg.trainer.epochs) * steps_per_epoch)
    scheduler = warmup_cosine(optimizer, warmup, cfg.trainer.epochs * steps_per_epoch, oc.min_lr / oc.lr)
    mixup, criterion = build_mixup(data, cfg.trainer.label_smoothing, procs.world)
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        stop=stop,
        procs=procs,
        device=device,
        amp_dtype=amp_dtype,
        data=data,
        train_batches=train_batches,
        val_batches=val_batches,
        mean=torch.tensor(data.mean, device=device),
        std=torch.tensor(data.std, device=device),
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        mixup=mixup,
        criterion=criterion,
        started=started,
    )


def build_mixup(data, label_smoothing: float, world: int) -> tuple[Any, nn.Module]:
    """timm's Mixup/CutMix and its soft-target loss, when the data config asks for them."""
    if not (data.mixup or data.cutmix):
        return None, nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if (data.batch_size // world) % 2:  # each process mixes its own part of the batch, in pairs
        raise ConfigError(
            f"data: mixup and cutmix need an even batch on each process: data.batch_size={data.batch_size} "
            f"on {world} processes gives {data.batch_size // world}"
        )
    from timm.data import Mixup  # timm only when used: it costs seconds to import
    from timm.loss import SoftTargetCrossEntropy

    mixup = Mixup(
        mixup_alpha=data.mixup, cutmix_alpha=data.cutmix, label_smoothing=label_smoothing, num_classes=data.num_classes
    )
    return mixup, SoftTargetCrossEntropy()


def restore(run: Run, start: Start) -> Progress:
    """Load the checkpoint's state (when resuming), then make the EMA from the weights now in
    the model, and wrap the model for several processes and compilation."""
    progress, state = Progress(), start.checkpoint
    if state is not None:
        run.model.load_state_dict(state["model"])
        load_optimizer_state(run.optimizer, state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        restore_loss_scale(run, state)
        set_rng_state(state["rng"][run.procs.rank], run.device)
        progress = Progress.from_checkpoint(state)
        where = f"epoch {progress.epoch + 1}, batch {progress.batch_in_epoch}, step {progress.step}"
        log.info(f"resumed from {start.source}: {where}")
    if run.cfg.trainer.ema:
        run.ema = WeightEma(run.model, decay=run.cfg.trainer.ema_decay)
        if state is not None and state.get("ema") is not None:
            run.ema.load_state_dict(state["ema"])
    run.net = run.model
    if run.procs.world > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        run.net = DistributedDataParallel(run.model, device_ids=device_ids)
    if run.cfg.trainer.compile:
        # a Hydra sweep runs its jobs in one process: fresh caches, so earlier jobs' graphs do
        # not count towards dynamo's recompile limit (past it, a model silently runs eager)
        torch._dynamo.reset()
        run.net = torch.compile(run.net)
    if run.procs.is_main:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in run.model.parameters())
    log.info(
        f"{params:,} parameters, {run.steps_per_epoch} steps per epoch on {run.procs.world} x {run.device}, "
        f"precision {precision.precision_name(run.amp_dtype)}, run dir {run.run_dir}"
    )
    return progress


def restore_loss_scale(run: Run, state: dict) -> None:
    """fp16's loss scale, when the checkpoint has one and this session runs fp16. A session in
    another precision than the checkpoint's says so (fp16 then starts its scale afresh)."""
    saved, now = state.get("precision"), precision.precision_name(run.amp_dtype)
    if saved is not None and saved != now:
        afresh = ": the loss scale starts afresh" if now == "fp16" else ""
        log.warning(f"the checkpoint trained in {saved}, this session runs {now}{afresh}")
    if state["scaler"] and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["scaler"])


# --- one epoch ----------------------------------------------------------------------------


def train_epoch(run: Run, progress: Progress, runlog: RunLog) -> EpochTraining | None:
    """Train what is left of the current epoch. None when a signal stopped it (last.pt saved)."""
    started = time.time()
    run.model.train()
    run.train_batches.set_epoch(progress.epoch, progress.batch_in_epoch)
    loss_sum = torch.tensor(progress.epoch_loss_sum, device=run.device, dtype=torch.float64)
    unsynced: list[torch.Tensor] = []  # the losses since the last sync: read once every few steps
    bar = progress_bar(run, progress)
    clock = WaitClock(prepared_batches(run, progress.epoch, progress.batch_in_epoch), run.device)
    first_step_s = 0.0
    for x, targets in clock:
        step_started = time.time()
        unsynced.append(train_step(run, x, targets, progress.step))
        if run.first_step_s is None:  # compilation and one-time set-up: timed apart from the rest
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            run.first_step_s = first_step_s = time.time() - step_started
        progress.step += 1
        progress.batch_in_epoch += 1
        bar.update()
        if progress.step % run.cfg.trainer.log_every == 0 or progress.batch_in_epoch == run.steps_per_epoch:
            synced_sum, stopping = sync(run, unsynced, progress, runlog, bar)
            loss_sum += synced_sum
            unsynced = []
        else:  # one process alone may stop between syncs; several agree at the next one
            stopping = run.procs.world == 1 and run.stop.signum > 0
        if stopping:
            if unsynced:  # never save weights that a NaN has reached
                losses = torch.stack(unsynced).double()
                check_finite(losses, progress, run.checkpoints)
                loss_sum += losses.sum()
            progress.epoch_loss_sum = loss_sum.item()
            progress.epoch_train_s += time.time() - started
            bar.close()
            save_and_stop(run, progress)
            return None
    bar.close()
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return EpochTraining(loss_sum, time.time() - started, clock.seconds, started, first_step_s)


def prepared_batches(run: Run, epoch: int, first_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole data path, all of it timed by the WaitClock: normalise, then Mixup with the
    draws of this global step: the same on every process, and after a resume."""
    first_step = epoch * run.steps_per_epoch + first_batch
    for step, (images, labels) in enumerate(run.train_batches, start=first_step):
        x = normalize(images, run.mean, run.std)
        if run.mixup is not None:
            np.random.seed(numpy_seed("mixup", run.cfg.seed, step))  # timm's Mixup draws from numpy
            x, labels = run.mixup(x, labels)
        yield x, labels


def train_step(run: Run, x: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
    with run.autocast():
        loss = run.criterion(run.net(x), targets)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.optim.clip_grad:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model, step=step)
    return loss.detach()


def sync(run: Run, unsynced: list, progress: Progress, runlog: RunLog, bar) -> tuple[torch.Tensor, bool]:
    """One sync every few steps: the NaN check, the log, and whether any process was asked to
    stop. Returns the losses' sum and that answer."""
    losses = torch.stack(unsynced).double()
    check_finite(losses, progress, run.checkpoints)
    stop_votes = torch.tensor(float(run.stop.signum > 0), device=run.device, dtype=torch.float64)
    reduced = distributed.all_reduce_sum(torch.stack([losses.mean(), stop_votes]))
    mean_loss, lr = reduced[0].item() / run.procs.world, run.scheduler.get_last_lr()[0]
    runlog.scalars({"train/loss": mean_loss, "train/lr": lr}, progress.step)
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
    return losses.sum(), reduced[1].item() > 0


def check_finite(losses: torch.Tensor, progress: Progress, checkpoints: Path) -> None:
    """`losses` are those of the steps up to `progress.step`; stop at the first that is NaN
    or infinite, before any checkpoint holds the weights it reached."""
    if not torch.isfinite(losses).all():
        first = int((~torch.isfinite(losses)).nonzero()[0])
        raise TrainingError(
            f"loss is {losses[first].item()} at step {progress.step - len(losses) + 1 + first} "
            f"(epoch {progress.epoch + 1}); stopped without saving, the last good checkpoint stays in {checkpoints}"
        )


def progress_bar(run: Run, progress: Progress) -> tqdm:
    return tqdm(
        total=run.steps_per_epoch,
        initial=progress.batch_in_epoch,
        desc=f"epoch {progress.epoch + 1}/{run.cfg.trainer.epochs}",
        disable=not (run.procs.is_main and sys.stderr.isatty()),
        leave=False,
        dynamic_ncols=True,
    )


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_state(run: Run, progress: Progress) -> dict:
    """Everything a resume needs, every process's random streams included (all take part)."""
    rngs = [None] * run.procs.world
    if run.procs.world > 1:
        torch.distributed.all_gather_object(rngs, rng_state(run.device))
    else:
        rngs = [rng_state(run.device)]
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        **progress.to_checkpoint(session_s=time.time() - run.started),
        "rng": rngs,
        "world_size": run.procs.world,
        "precision": precision.precision_name(run.amp_dtype),
        "config": OmegaConf.to_container(run.cfg, resolve=True),
    }


def save_and_stop(run: Run, progress: Progress) -> None:
    state = checkpoint_state(run, progress)
    if run.procs.is_main:
        save_checkpoint(state, run.checkpoints, is_best=False)
        log.info(
            f"stopped by signal {run.stop.signum or 'on another rank'} at epoch {progress.epoch + 1}, "
            f"step {progress.step}; saved {run.checkpoints / 'last.pt'}; continue with "
            f"hydra.run.dir={run.run_dir} resume=auto"
        )


# --- the end of an epoch ----------------------------------------------------------------------


def end_epoch(run: Run, progress: Progress, epoch: EpochTraining, runlog: RunLog) -> dict:
    """Evaluate (every trainer.eval_every epochs and at the last), count the epoch, save
    best.pt and last.pt, log. Returns the epoch's record."""
    train_s = progress.epoch_train_s + epoch.session_s
    world, steps, batch = run.procs.world, run.steps_per_epoch, run.data.batch_size
    record = {
        "epoch": progress.epoch + 1,
        "step": progress.step,
        "train_loss": distributed.all_reduce_sum(epoch.loss_sum.clone()).item() / (world * steps),
        "lr": run.scheduler.get_last_lr()[0],
        "images_per_sec": steady_images_per_sec(steps, batch, train_s, epoch.first_step_s),
        "first_step_s": epoch.first_step_s,
        "data_wait_frac": epoch.wait_s / epoch.session_s,
        "threads": torch.get_num_threads(),
    }
    if evaluated(record["epoch"], run.cfg.trainer.eval_every, run.cfg.trainer.epochs):
        record.update(validation(run))
    record["epoch_s"] = time.time() - epoch.started
    is_best = progress.finish_epoch(record.get("val_acc1"))
    state = checkpoint_state(run, progress)
    if run.procs.is_main:  # best first: should last.pt then fail, a resume redoes this epoch, logged once
        save_checkpoint(state, run.checkpoints, is_best)
    log_epoch(run, record, runlog)
    return record


def evaluated(epoch: int, every: int, epochs: int) -> bool:
    """Whether epoch (1-based) of `epochs` ends with an evaluation: every `every`-th one, and the last."""
    return epoch % every == 0 or epoch >= epochs


def validation(run: Run) -> dict[str, float]:
    """The record's validation keys: the model's, and the EMA's when there is one."""
    # the eager model: a compiled one would recompile for eval mode and the short last batch
    tta = run.cfg.trainer.tta
    val = evaluate(run.model, run.val_batches, run.mean, run.std, run.autocast, tta)
    out = {"val_loss": val["loss"], "val_acc1": val["acc1"], "val_acc5": val["acc5"]}
    if run.ema is not None:
        ema = evaluate(run.ema.module, run.val_batches, run.mean, run.std, run.autocast, tta)
        out.update(ema_val_loss=ema["loss"], ema_val_acc1=ema["acc1"], ema_val_acc5=ema["acc5"])
    return out


@torch.no_grad()
def evaluate(net, loader, mean, std, autocast, tta: str = "none") -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over the whole split, summed over ranks; with
    test-time augmentation `tta` (vit/training/tta.py)."""
    net.eval()
    totals = torch.zeros(4, device=mean.device, dtype=torch.float64)  # loss, top1, top5, count
    for images, labels in loader:
        logits = scores(net, images, mean, std, autocast, tta)
        top1, top5 = hits(logits, labels)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        totals[:3] += torch.stack([loss, top1.sum(), top5.sum()]).double()
        totals[3] += len(labels)  # a host number: no copy to the device, no sync per batch
    loss, top1, top5, count = distributed.all_reduce_sum(totals).tolist()
    return {"loss": loss / count, "acc1": 100 * top1 / count, "acc5": 100 * top5 / count}


def log_epoch(run: Run, record: dict, runlog: RunLog) -> None:
    """metrics.jsonl, TensorBoard (and the positional table's similarity figure), the console."""
    runlog.epoch(record)
    names = {"val_loss": "val/loss", "val_acc1": "val/acc1", "val_acc5": "val/acc5", "ema_val_acc1": "val_ema/acc1"}
    scalars = {
        **{tag: record[key] for key, tag in names.items() if key in record},  # epochs without evaluation: none
        "train/images_per_sec": record["images_per_sec"],
        "train/data_wait_frac": record["data_wait_frac"],
        "time/epoch_s": record["epoch_s"],
    }
    runlog.scalars(scalars, record["step"])
    epoch, tc = record["epoch"], run.cfg.trainer
    if run.procs.is_main and (epoch % tc.pos_image_every == 0 or epoch == tc.epochs):
        grid = run.model.grid_for(*run.model.img_size)
        table = run.model.pos_embed.position_table(grid)
        if table is not None:
            from vit.training.similarity_image import similarity_figure  # matplotlib, only for the schemes with a table

            runlog.figure("pos_embed/similarity", similarity_figure(table, grid), record["step"])
    val = (
        f"val loss {record['val_loss']:.4f}  acc1 {record['val_acc1']:.2f}  acc5 {record['val_acc5']:.2f}"
        if "val_acc1" in record
        else f"(evaluated every {tc.eval_every} epochs)"
    )
    log.info(
        f"epoch {epoch}/{tc.epochs}  train loss {record['train_loss']:.4f}  {val}  "
        f"{record['images_per_sec']:.0f} img/s  {record['epoch_s']:.1f}s"
        + (f" (first step {record['first_step_s']:.1f}s)" if record["first_step_s"] else "")
    )


# --- the summary ------------------------------------------------------------------------------


def steady_images_per_sec(steps: int, batch: int, train_s: float, first_step_s: float) -> float:
    """The epoch's training images/s without the session's first step (compilation), when
    the epoch had it and more steps than that one."""
    if first_step_s and steps > 1:
        steps, train_s = steps - 1, train_s - first_step_s
    return steps * batch / train_s


def threads_trained(history: list[dict]) -> int | list[int]:
    """The CPU threads the epochs trained on: one count, or each count where a resume changed
    it (epochs logged before threads were recorded count as this session's)."""
    now = torch.get_num_threads()
    counts = sorted({r.get("threads", now) for r in history} or {now})
    return counts[0] if len(counts) == 1 else counts


def summarize(run: Run, progress: Progress, history: list, runlog: RunLog, choices: dict, overrides: list) -> dict:
    """summary.json (rank 0), with throughput over every epoch, earlier sessions' included."""
    if not run.procs.is_main:
        return {"best_val_acc1": progress.best_val_acc1}
    per_epoch = run.steps_per_epoch * run.data.batch_size
    train_seconds = sum(per_epoch / r["images_per_sec"] for r in history)
    cfg = run.cfg
    scored = [r for r in history if "val_acc1" in r]  # the last epoch always is
    summary = {
        "best_val_acc1": max(r["val_acc1"] for r in scored),
        "final_val_acc1": scored[-1]["val_acc1"],
        "final_val_acc5": scored[-1]["val_acc5"],
        "params": sum(p.numel() for p in run.model.parameters()),
        "train_images_per_sec": len(history) * per_epoch / train_seconds,  # steady: first steps apart
        "first_step_s": sum(r.get("first_step_s", 0.0) for r in history),  # every session's, compiling included
        "wall_time_s": progress.elapsed_s + time.time() - run.started,
        "epochs": cfg.trainer.epochs,
        "data": run.data.name,
        # without Hydra's choices (called from Python), the scheme's module: rope_2d.py for rope_2d
        "pos_embed": choices.get("model/pos_embed") or cfg.model.pos_embed._target_.split(".")[-2],
        "overrides": overrides,
        "device": str(run.device),
        "precision": precision.precision_name(run.amp_dtype),
        "world_size": run.procs.world,
        # on a CPU the same seed on another thread count rounds differently and parts like another seed
        "threads": threads_trained(history),
    }
    if run.ema is not None:
        summary["best_ema_val_acc1"] = max(r["ema_val_acc1"] for r in scored)
        summary["final_ema_val_acc1"] = scored[-1]["ema_val_acc1"]
    runlog.finish(summary, cfg, progress.step)
    log.info(
        f"done: best val acc1 {summary['best_val_acc1']:.2f}, final {summary['final_val_acc1']:.2f}, "
        f"{summary['wall_time_s']:.0f}s; {run.run_dir}"
    )
    return summary
