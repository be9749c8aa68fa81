"""The training loop, in plain PyTorch: read it top to bottom.

    set up (device, data, model, optimizer, schedule, EMA, resume)
    for each epoch:
        for each batch: normalise on device -> [mixup] -> forward under autocast -> backward
                        -> clip -> step -> schedule -> EMA; every few steps: log, NaN check, stop check
        evaluate (and the EMA), write metrics, save last.pt (and best.pt)
    write summary.json and the HParams entry

SIGTERM / Ctrl-C saves last.pt at the next step and exits; `resume=auto` picks it up at
that exact batch, with the same random streams, so the weights end up bit-identical.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vit.cli import build_model, check_precision, instantiate_group
from vit.training import distributed
from vit.training.checkpoint import CheckpointError, load_checkpoint, rng_state, save_atomic, set_rng_state
from vit.training.data.augment import normalize
from vit.training.optim import build_optimizer, warmup_cosine
from vit.training.run_log import RunLog

log = logging.getLogger("vit")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class TrainingError(Exception):
    """Stops the run with one line and exit code 1."""


class StopRequest:
    """SIGTERM / SIGINT ask the loop to save and stop at the next step; a second Ctrl-C kills.
    `restore()` puts back the handlers it replaced, so the next run of a sweep (or the
    process that called `train`) gets its own."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = 0
        self.previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}

    def handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class WaitClock:
    """Wraps the batches and adds up the time the training step waits for the next one.

    CPU: host time spent in `next()`. CUDA: time on the GPU's own timeline between events
    recorded around `next()` (the data kernels, plus any gap while the GPU idled for the host
    to produce the batch), read after the epoch's final synchronize, so no step waits for it.
    Host time would mislead there: a host running ahead of the GPU waits for no batch.
    """

    def __init__(self, batches, device: torch.device):
        self.batches, self.cuda, self.host_s, self.events = batches, device.type == "cuda", 0.0, []

    def __iter__(self):
        batches = iter(self.batches)
        while True:
            if self.cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
            else:
                start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            if self.cuda:
                end.record()
                self.events.append((begin, end))
            else:
                self.host_s += time.perf_counter() - start
            yield batch

    @property
    def seconds(self) -> float:
        return self.host_s + sum(begin.elapsed_time(end) for begin, end in self.events) / 1000


def choose_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("trainer.device=cuda but no CUDA device is available")
    device = torch.device(name)
    if device.type == "cuda" and distributed.current().world > 1:
        device = torch.device("cuda", distributed.current().local_rank)
    return device


def choose_precision(name: str, device: torch.device) -> torch.dtype | None:
    check_precision(name)
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return DTYPES[name]


def check_finite(losses: torch.Tensor, step: int, epoch: int, ckpt_dir: Path) -> None:
    """`losses` are those of the steps up to `step`; stop at the first that is NaN or infinite."""
    if not torch.isfinite(losses).all():
        first = int((~torch.isfinite(losses)).nonzero()[0])
        raise TrainingError(
            f"loss is {losses[first].item()} at step {step - len(losses) + 1 + first} (epoch {epoch + 1}); "
            f"stopped without saving, the last good checkpoint stays in {ckpt_dir}"
        )


@torch.no_grad()
def evaluate(net, loader, mean, std, autocast) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over the whole split, summed over ranks."""
    net.eval()
    totals = torch.zeros(4, device=mean.device, dtype=torch.float64)  # loss, top1, top5, count
    for images, labels in loader:
        with autocast():
            logits = net(normalize(images, mean, std))
        k = min(5, logits.shape[-1])
        hits = logits.topk(k, dim=-1).indices == labels[:, None]
        totals[:3] += torch.stack(
            [
                F.cross_entropy(logits.float(), labels, reduction="sum"),
                hits[:, 0].sum(),
                hits.any(dim=-1).sum(),
            ]
        ).double()
        totals[3] += len(labels)  # a host number: no copy to the device, no sync per batch
    loss, top1, top5, count = distributed.all_reduce_sum(totals).tolist()
    return {"loss": loss / count, "acc1": 100 * top1 / count, "acc5": 100 * top5 / count}


def train(
    cfg: DictConfig, run_dir: str | Path, choices: Mapping[str, str] | None = None, overrides: Sequence[str] = ()
) -> dict:
    """Train as `cfg` (the composed train config) says, in `run_dir`. `choices` (Hydra's
    group choices, e.g. {"model/pos_embed": "rope_2d"}) and `overrides` (the command line's)
    are recorded in summary.json. Returns the summary, or {"stopped": signal} if a signal
    stopped the run (last.pt saved)."""
    stop = StopRequest()
    try:
        return _train(cfg, Path(run_dir), dict(choices or {}), list(overrides), stop)
    finally:
        stop.restore()


def _train(cfg: DictConfig, run_dir: Path, choices: dict, overrides: list, stop: StopRequest) -> dict:
    t_start = time.time()
    procs = distributed.current()
    tc, oc = cfg.trainer, cfg.optim

    # --- where this run stands: new, to resume, or finished -----------------------------------
    ckpt_dir = run_dir / "checkpoints"
    resume_from = cfg.resume
    if cfg.resume == "auto":
        resume_from = ckpt_dir / "last.pt" if (ckpt_dir / "last.pt").exists() else None
        if resume_from is None:
            log.info(f"resume=auto: no checkpoint in {ckpt_dir}, starting fresh")
    elif not cfg.resume and (ckpt_dir / "last.pt").exists():  # never overwrite another run's work
        raise TrainingError(
            f"{run_dir} already holds a run (checkpoints/last.pt): add resume=auto to continue it, "
            f"or choose another hydra.run.dir"
        )
    if cfg.resume == "auto" and (run_dir / "summary.json").exists() and resume_from:
        finished = json.loads((run_dir / "summary.json").read_text())
        if finished.get("epochs") == tc.epochs:  # nothing left to do: keep its summary as it is
            log.info(f"{run_dir} has finished all {tc.epochs} epochs; nothing to train")
            return finished

    # --- set-up ----------------------------------------------------------------------------
    device = choose_device(tc.device)
    amp_dtype = choose_precision(tc.precision, device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + procs.rank)
    np.random.seed(cfg.seed + procs.rank)

    data = instantiate_group(cfg, "data")
    train_batches, val_batches = data.loaders(device, procs.rank, procs.world, cfg.seed)
    mean = torch.tensor(data.mean, device=device)
    std = torch.tensor(data.std, device=device)
    steps_per_epoch = len(train_batches)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{train_batches.num_samples} training images make no batch of data.batch_size={data.batch_size}"
        )
    total_steps = tc.epochs * steps_per_epoch

    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, oc.lr, oc.weight_decay, oc.betas, fused=device.type == "cuda")
    scheduler = warmup_cosine(optimizer, round(oc.warmup_epochs * steps_per_epoch), total_steps, oc.min_lr / oc.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if tc.ema:
        from timm.utils import ModelEmaV3  # timm only when used: it costs seconds to import

        ema = ModelEmaV3(model, decay=tc.ema_decay)
    mixup, criterion = None, torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    if data.mixup or data.cutmix:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(
            mixup_alpha=data.mixup,
            cutmix_alpha=data.cutmix,
            label_smoothing=tc.label_smoothing,
            num_classes=data.num_classes,
        )
        criterion = SoftTargetCrossEntropy()

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    def prepared(batches):  # the whole data path, all of it timed by the WaitClock
        for images, labels in batches:
            x = normalize(images, mean, std)
            yield mixup(x, labels) if mixup is not None else (x, labels)

    # --- resume ------------------------------------------------------------------------------
    epoch, batch_in_epoch, step, best, elapsed = 0, 0, 0, -1.0, 0.0
    partial = {"loss_sum": 0.0, "train_s": 0.0}  # progress through an epoch cut short
    if resume_from:
        state = load_checkpoint(resume_from)
        check_same_model(state["config"], cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        best, elapsed, partial = state["best_val_acc1"], state["elapsed_s"], state["partial"]
        rngs = state["rng"]
        if len(rngs) == procs.world:
            set_rng_state(rngs[procs.rank])
        log.info(f"resumed from {resume_from}: epoch {epoch + 1}, batch {batch_in_epoch}, step {step}")

    net = model
    if procs.world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        # a Hydra sweep runs its jobs in one process: fresh caches, so earlier jobs' graphs do
        # not count towards dynamo's recompile limit (past it, a model silently runs eager)
        torch._dynamo.reset()
        net = torch.compile(net)

    if procs.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    runlog = RunLog(run_dir, procs.is_main, step if step else None, epoch)
    params = sum(p.numel() for p in model.parameters())
    log.info(
        f"{params:,} parameters, {steps_per_epoch} steps per epoch on {procs.world} x {device}, "
        f"precision {str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32'}, run dir {run_dir}"
    )
    show_bar = procs.is_main and sys.stderr.isatty()
    grid = model.grid_for(*model.img_size)

    def checkpoint_state(done_epochs: int, batch: int, epoch_partial: dict) -> dict:
        rngs = [None] * procs.world
        if procs.world > 1:
            torch.distributed.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "epoch": done_epochs,
            "batch_in_epoch": batch,
            "step": step,
            "best_val_acc1": best,
            "elapsed_s": elapsed + time.time() - t_start,
            "partial": epoch_partial,
            "rng": rngs,
            "config": OmegaConf.to_container(cfg, resolve=True),
        }

    # --- the loop ----------------------------------------------------------------------------
    history = runlog.history() if procs.is_main else []
    while epoch < tc.epochs:
        t_epoch = time.time()
        model.train()
        train_batches.set_epoch(epoch, batch_in_epoch)
        loss_sum = torch.tensor(partial["loss_sum"], device=device, dtype=torch.float64)
        window: list[torch.Tensor] = []
        bar = tqdm(
            total=steps_per_epoch,
            initial=batch_in_epoch,
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            disable=not show_bar,
            leave=False,
            dynamic_ncols=True,
        )
        t_train = time.time()
        waiting = WaitClock(prepared(train_batches), device)
        for x, targets in waiting:
            with autocast():
                loss = criterion(net(x), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if oc.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), oc.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            batch_in_epoch += 1
            window.append(loss.detach())
            bar.update()

            synced = step % tc.log_every == 0 or batch_in_epoch == steps_per_epoch
            if synced:  # one sync every few steps: NaN check, logging, stop agreement across ranks
                losses = torch.stack(window).double()
                window = []
                check_finite(losses, step, epoch, ckpt_dir)
                loss_sum += losses.sum()
                stop_votes = torch.tensor(float(stop.signum > 0), device=device, dtype=torch.float64)
                interval = distributed.all_reduce_sum(torch.stack([losses.mean(), stop_votes]))
                mean_loss, stopping = interval[0].item() / procs.world, interval[1].item() > 0
                lr = scheduler.get_last_lr()[0]
                runlog.scalars({"train/loss": mean_loss, "train/lr": lr}, step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
            else:
                stopping = procs.world == 1 and stop.signum > 0
            if stopping:
                if window:  # never save weights that a NaN has reached
                    check_finite(torch.stack(window).double(), step, epoch, ckpt_dir)
                    loss_sum += torch.stack(window).double().sum()
                epoch_partial = {"loss_sum": loss_sum.item(), "train_s": partial["train_s"] + time.time() - t_train}
                state = checkpoint_state(epoch, batch_in_epoch, epoch_partial)
                if procs.is_main:
                    save_atomic(state, ckpt_dir / "last.pt")
                    log.info(
                        f"stopped by signal {stop.signum or 'on another rank'} at epoch {epoch + 1}, "
                        f"step {step}; saved {ckpt_dir / 'last.pt'}; continue with "
                        f"hydra.run.dir={run_dir} resume=auto"
                    )
                bar.close()
                runlog.close()
                return {"stopped": stop.signum or signal.SIGTERM}
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize()
        session_s = time.time() - t_train  # this session's part of the epoch (all of it unless resumed)
        train_s = partial["train_s"] + session_s
        train_loss = distributed.all_reduce_sum(loss_sum.clone()).item() / (procs.world * steps_per_epoch)

        # the eager model: a compiled one would recompile for eval mode and the short last batch
        val = evaluate(model, val_batches, mean, std, autocast)
        record = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_acc1": val["acc1"],
            "val_acc5": val["acc5"],
            "lr": scheduler.get_last_lr()[0],
            "images_per_sec": steps_per_epoch * data.batch_size / train_s,
            "data_wait_frac": waiting.seconds / session_s,
        }
        if ema is not None:
            ema_val = evaluate(ema.module, val_batches, mean, std, autocast)
            record.update(ema_val_loss=ema_val["loss"], ema_val_acc1=ema_val["acc1"], ema_val_acc5=ema_val["acc5"])
        record["epoch_s"] = time.time() - t_epoch
        epoch += 1
        batch_in_epoch, partial = 0, {"loss_sum": 0.0, "train_s": 0.0}
        is_best = record["val_acc1"] > best
        best = max(best, record["val_acc1"])

        state = checkpoint_state(epoch, 0, partial)
        if procs.is_main:  # best first: should last.pt then fail, a resume redoes this epoch, logged once
            if is_best:
                save_atomic(state, ckpt_dir / "best.pt")
            save_atomic(state, ckpt_dir / "last.pt")
        runlog.epoch(record)
        history.append(record)
        runlog.scalars(
            {
                "val/loss": record["val_loss"],
                "val/acc1": record["val_acc1"],
                "val/acc5": record["val_acc5"],
                "train/images_per_sec": record["images_per_sec"],
                "train/data_wait_frac": record["data_wait_frac"],
                "time/epoch_s": record["epoch_s"],
                **({"val_ema/acc1": record["ema_val_acc1"]} if ema is not None else {}),
            },
            step,
        )
        table = model.pos_embed.position_table(grid)
        if table is not None and procs.is_main and (epoch % tc.pos_image_every == 0 or epoch == tc.epochs):
            from vit.studies.figures import similarity_figure  # matplotlib, only for the schemes that have a table

            runlog.figure("pos_embed/similarity", similarity_figure(table, grid), step)
        log.info(
            f"epoch {epoch}/{tc.epochs}  train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
            f"acc1 {val['acc1']:.2f}  acc5 {val['acc5']:.2f}  {record['images_per_sec']:.0f} img/s  "
            f"{record['epoch_s']:.1f}s"
        )

    # --- the end -----------------------------------------------------------------------------
    if not procs.is_main:
        runlog.close()
        return {"best_val_acc1": best}
    # throughput over all epochs, including those of earlier sessions of a resumed run
    images = len(history) * steps_per_epoch * data.batch_size
    train_seconds = sum(steps_per_epoch * data.batch_size / r["images_per_sec"] for r in history)
    summary = {
        "best_val_acc1": max(r["val_acc1"] for r in history),
        "final_val_acc1": history[-1]["val_acc1"],
        "final_val_acc5": history[-1]["val_acc5"],
        "params": params,
        "train_images_per_sec": images / train_seconds,
        "wall_time_s": elapsed + time.time() - t_start,
        "epochs": tc.epochs,
        "data": data.name,
        # without Hydra's choices (called from Python), the scheme's module: rope_2d.py for rope_2d
        "pos_embed": choices.get("model/pos_embed") or cfg.model.pos_embed._target_.split(".")[-2],
        "overrides": overrides,
        "device": str(device),
        "world_size": procs.world,
    }
    if ema is not None:
        summary["best_ema_val_acc1"] = max(r["ema_val_acc1"] for r in history)
        summary["final_ema_val_acc1"] = history[-1]["ema_val_acc1"]
    runlog.finish(summary, cfg, step)
    runlog.close()
    log.info(
        f"done: best val acc1 {summary['best_val_acc1']:.2f}, final {summary['final_val_acc1']:.2f}, "
        f"{summary['wall_time_s']:.0f}s; {run_dir}"
    )
    return summary


ARCHITECTURE = {"model": None, "data": ("name", "img_size", "in_chans", "num_classes", "classes")}
TRAINING_ONLY = ("drop_path_rate", "dropout")  # may change between sessions of a run


def check_same_model(saved: dict, cfg: DictConfig) -> None:
    """Refuse, in one line, to resume a checkpoint of another model or dataset."""
    current = OmegaConf.to_container(cfg, resolve=True)
    for group, keys in ARCHITECTURE.items():
        old, new = saved.get(group, {}), current[group]
        for key in keys or sorted(set(old) | set(new)):
            if key not in TRAINING_ONLY and old.get(key) != new.get(key):
                raise CheckpointError(
                    f"the checkpoint was trained with {group}.{key}={old.get(key)}, this run has {new.get(key)}"
                )
