"""End to end: training on real formats, what a run leaves behind, and never losing work.

Runs train in this process (`runs.train`, composed as scripts/train.py composes); only what
is about the command line starts `scripts/train.py`: exit codes and one-line errors, a real
SIGTERM, torchrun.
"""

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_files import make_cifar10_archive, make_class_folders
from runs import ROOT, TINY, metrics, one_error_line, script, train, train_command
from vit.cli import ConfigError, compose
from vit.errors import TrainingError
from vit.threads import torch_threads
from vit.training import checkpoint
from vit.training.checkpoint import CHECKPOINTS, CheckpointError, load_checkpoint
from vit.training.data import DataError
from vit.training.optim import warmup_epochs
from vit.training.trainer import StopRequest, build

PROBE = ["experiment=probe", "data.num_train=256", "data.num_val=128", "trainer.epochs=1", *TINY]


def test_digits_run_leaves_metrics_summary_events_and_checkpoints(tmp_path):
    run = tmp_path / "run"
    summary = train(run, "experiment=digits", "trainer.epochs=2", *TINY)

    records = metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "val_loss", "val_acc1", "val_acc5", "lr", "images_per_sec", "epoch_s", "step"} <= records[
        0
    ].keys()
    assert all(0 <= r["data_wait_frac"] < 1 for r in records)
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[1]["step"] == 2 * (1438 // 64)  # digits: 1,438 training images, batch 64

    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["best_val_acc1"] == max(r["val_acc1"] for r in records)
    assert summary["final_val_acc1"] == records[-1]["val_acc1"]
    assert summary["epochs"] == 2 and summary["train_images_per_sec"] > 0 and summary["wall_time_s"] > 0
    assert "trainer.epochs=2" in summary["overrides"] and summary["pos_embed"] == "learned_1d"
    assert summary["threads"] == torch.get_num_threads() and {r["threads"] for r in records} == {summary["threads"]}

    events = EventAccumulator(str(run))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/images_per_sec",
        "train/data_wait_frac",
        "val/loss",
        "val/acc1",
        "val/acc5",
        "time/epoch_s",
    } <= scalars
    assert [e.value for e in events.Scalars("val/acc1")] == pytest.approx([r["val_acc1"] for r in records])
    assert "pos_embed/similarity" in events.Tags()["images"]
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")

    last, best = load_checkpoint(run / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "best.pt")
    assert (last["epoch"], last["step"]) == (2, records[-1]["step"])
    assert {"optimizer", "scheduler", "scaler", "ema", "rng", "config"} <= last.keys()
    assert last["config"]["model"]["embed_dim"] == 32
    assert summary["params"] == sum(t.numel() for k, t in last["model"].items() if "running" not in k)
    best_epoch = max(records, key=lambda r: r["val_acc1"])["epoch"]
    assert best["epoch"] == best_epoch
    assert not list(run.glob("checkpoints/*.tmp"))

    # a fresh run may not overwrite it
    with pytest.raises(TrainingError, match="already holds a run"):
        train(run, "experiment=digits", "trainer.epochs=2", *TINY)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == last["step"]


def test_evaluating_every_second_epoch_scores_and_keeps_the_best_of_those_and_the_last(tmp_path):
    run = tmp_path / "run"
    summary = train(run, "experiment=digits", "trainer.epochs=3", "trainer.eval_every=2", *TINY)

    records = metrics(run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert ["val_acc1" in r for r in records] == [False, True, True]  # the 2nd, and the last
    assert {"train_loss", "lr", "images_per_sec", "epoch_s"} <= records[0].keys()
    assert summary["best_val_acc1"] == max(records[1]["val_acc1"], records[2]["val_acc1"])
    assert summary["final_val_acc1"] == records[2]["val_acc1"]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == max(records[1:], key=lambda r: r["val_acc1"])["epoch"]

    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.step for e in events.Scalars("val/acc1")] == [records[1]["step"], records[2]["step"]]
    assert len(events.Scalars("time/epoch_s")) == 3


def test_probe_run(tmp_path):
    summary = train(tmp_path / "run", *PROBE)
    assert summary["data"] == "probe" and 0 <= summary["final_val_acc1"] <= 100
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]["head.weight"].shape == (4, 32)


def test_a_test_of_cpu_behaviour_trains_on_the_cpu_where_torch_sees_a_gpu(tmp_path, monkeypatch):
    from vit.training import trainer

    def as_on_a_gpu_machine(name):  # torch found the GPU before conftest hid it from subprocesses
        with monkeypatch.context() as gpu:
            gpu.setattr(torch.cuda, "is_available", lambda: True)
            return choose(name)

    choose = trainer.choose_device
    monkeypatch.setattr(trainer, "choose_device", as_on_a_gpu_machine)
    assert train(tmp_path / "run", *PROBE)["device"] == "cpu"


def test_the_first_step_is_timed_apart_from_the_throughput(tmp_path, monkeypatch):
    from vit.training import trainer

    calls, step = [], trainer.train_step

    def slow_first(*args):  # as compiling makes it
        calls.append(1)
        if len(calls) == 1:
            time.sleep(2.0)
        return step(*args)

    monkeypatch.setattr(trainer, "train_step", slow_first)
    summary = train(tmp_path / "run", *PROBE, "trainer.epochs=2")
    first, second = metrics(tmp_path / "run")
    assert first["first_step_s"] >= 2.0 and second["first_step_s"] == 0.0
    assert summary["first_step_s"] == first["first_step_s"]
    images = 256  # 2 steps of 128: had the 2 s counted, epoch 1 would read under 128 img/s
    assert first["images_per_sec"] > 4 * images / first["first_step_s"]


def test_training_from_python_without_hydras_run_state(tmp_path):
    # docs/models.md's "From Python": a composed config and a folder, nothing else
    from vit.cli import compose
    from vit.training.trainer import train as train_run

    summary = train_run(compose("train", [*PROBE, "model/pos_embed=rope_2d"]), str(tmp_path / "run"))
    assert summary["pos_embed"] == "rope_2d" and summary["overrides"] == []
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_a_run_puts_back_the_signal_handlers_it_found(tmp_path):
    # a sweep runs its jobs in one process: a Ctrl-C after a run must not land on that run's handler
    def mine(signum, frame):
        pass

    before = {sig: signal.signal(sig, mine) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        train(tmp_path / "run", *PROBE, "data.num_train=64", "data.batch_size=32")
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
        with pytest.raises(TrainingError, match="make no batch"):  # and after a run that failed
            train(tmp_path / "failed", *PROBE, "data.num_train=64", "data.batch_size=128")
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on CPU needs a C++ compiler"
)
def test_compiled_run_saves_the_plain_model(tmp_path):
    # torch.compile wraps the model; checkpoints and evaluation must still see the plain one
    run = tmp_path / "run"
    train(run, *PROBE, "trainer.compile=true")
    weights = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert "head.weight" in weights and not any("_orig_mod" in k for k in weights)
    assert 0 <= metrics(run)[0]["val_acc1"] <= 100


def test_class_folder_tree(tmp_path):
    root = make_class_folders(tmp_path / "tree")
    common = [
        "data=imagefolder",
        f"data.root={root}",
        "data.img_size=16",
        "data.batch_size=6",
        "data.num_workers=1",
        "trainer.epochs=1",
        *TINY,
    ]
    run = tmp_path / "run"  # data.num_classes left out: the three class folders
    train(run, *common, "data.policy=trivialaugment")
    assert metrics(run)[0]["val_acc1"] * 12 / 100 == pytest.approx(round(metrics(run)[0]["val_acc1"] * 12 / 100))
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["model"]["head.weight"].shape[0] == 3 and state["config"]["data"]["num_classes"] == 3
    subset = tmp_path / "subset"
    train(subset, *common, "data.classes=[dog,fox]")
    assert load_checkpoint(subset / "checkpoints" / "last.pt")["model"]["head.weight"].shape[0] == 2
    train(tmp_path / "agreed", *common, "data.classes=2", "data.num_classes=2")
    with pytest.raises(DataError, match="3 classes chosen under .* but data.num_classes is 5"):
        train(tmp_path / "mismatch", *common, "data.num_classes=5")


def test_warm_up_is_a_tenth_of_a_short_run_and_five_epochs_of_a_long_one(tmp_path):
    assert [warmup_epochs("auto", epochs) for epochs in (3, 8, 50, 300)] == [0.3, 0.8, 5.0, 5.0]
    assert warmup_epochs(2, 8) == 2.0 and warmup_epochs(0, 100) == 0.0  # a number is taken as given
    overrides = ["data.num_train=640", "data.batch_size=64", "trainer.epochs=3", "optim.warmup_epochs=auto"]
    cfg = compose("train", ["experiment=probe", *overrides, *TINY])
    run = build(cfg, tmp_path, StopRequest())
    factor = run.scheduler.lr_lambdas[0]
    warm = round(0.3 * run.steps_per_epoch)  # 3 of 10 steps per epoch
    assert run.steps_per_epoch == 10 and [factor(k) for k in range(warm)] == [(k + 1) / warm for k in range(warm)]
    assert factor(warm) == 1.0 and factor(warm + 1) < 1.0  # then the cosine
    run.stop.restore()


@pytest.mark.parametrize("policy", ["none", "trivialaugment"])
def test_cifar_archive_through_torchvisions_parser(tmp_path, policy):
    data_root = tmp_path / "data"
    make_cifar10_archive(data_root)
    run = tmp_path / "run"
    train(
        run,
        "data=cifar10",
        f"data.root={data_root}",
        "data.download=false",
        "data.verify_checksums=false",
        "data.batch_size=16",
        "trainer.epochs=1",
        f"data.policy={policy}",
        *TINY,
    )
    assert (data_root / "cifar-10-batches-py" / "data_batch_1").exists()  # extracted from the archive
    record = metrics(run)[0]
    assert record["step"] == 5 * 16 // 16  # 80 training images
    assert record["val_acc1"] * 16 / 100 == pytest.approx(round(record["val_acc1"] * 16 / 100))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs"


def kill_9_during_a_checkpoint_write(proc: subprocess.Popen, folder) -> bool:
    """Watch `folder` (without sleeping) and SIGKILL the process while it writes a new
    last.pt over an earlier one; False if the run ended first."""
    while proc.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            names = os.listdir(folder)
            if "last.pt.tmp" in names and ("last.pt" in names or "previous.pt" in names):
                proc.kill()
                proc.wait()
                return True
    return False


def kill_9_while_training(proc: subprocess.Popen, log, sessions: int, after: float) -> None:
    """SIGKILL the process `after` seconds into its training: once its log shows the
    `sessions`-th start of training in that run folder."""
    deadline = time.time() + 300  # a loaded machine starts a process slowly
    while proc.poll() is None and log.read_text().count(" parameters, ") < sessions:
        assert time.time() < deadline
        time.sleep(0.01)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=after)
    proc.kill()


def test_interrupted_and_killed_runs_resume_to_bit_identical_weights(tmp_path):
    # dropout, stochastic depth, mixup and EMA all draw randomness or carry state
    args = [
        "experiment=digits",
        "trainer.epochs=3",
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "model.dropout=0.1",
        "model.drop_path_rate=0.1",
        "data.mixup=0.2",
        "trainer.ema=true",
        "trainer.log_every=3",
    ]
    full = tmp_path / "full"
    train(full, *args)
    reference = load_checkpoint(full / "checkpoints" / "last.pt")

    # a real SIGTERM to a real process: it saves, and exits 143 so that a scheduler requeues it
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        train_command(cut, *args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not ((cut / "metrics.jsonl").exists() and (cut / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert 1 <= stopped["epoch"] < 3

    train(cut, *args, "resume=auto")
    assert_same_weights(reference, load_checkpoint(cut / "checkpoints" / "last.pt"))
    assert [r["epoch"] for r in metrics(cut)] == [1, 2, 3]  # each epoch logged once
    assert [r["val_acc1"] for r in metrics(cut)] == [r["val_acc1"] for r in metrics(full)]
    events = EventAccumulator(str(cut))
    events.Reload()
    assert len(events.Scalars("val/acc1")) == 3

    # a finished run, resumed again, trains nothing and keeps its summary
    summary = (cut / "summary.json").read_text()
    assert train(cut, *args, "resume=auto") == json.loads(summary)
    assert (cut / "summary.json").read_text() == summary

    # kill -9, no chance to save: first while a checkpoint is being written, then at random moments
    killed, moments = tmp_path / "killed", random.Random(0)
    command = train_command(killed, *args, "resume=auto")
    for _ in range(5):  # on a loaded machine the watcher can miss a write's few milliseconds
        shutil.rmtree(killed, ignore_errors=True)
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        (killed / "checkpoints").mkdir(parents=True)
        if kill_9_during_a_checkpoint_write(proc, killed / "checkpoints"):
            break
        assert proc.wait() == 0, proc.stderr.read()[-3000:]
    else:
        pytest.fail("five runs ended before one could be killed while writing a checkpoint")
    for attempt in range(8):
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt < 4:  # at a random moment of its training (about a second in all)
            kill_9_while_training(proc, killed / "train.log", sessions=attempt + 2, after=moments.uniform(0, 1.0))
        _, err = proc.communicate(timeout=300)
        if proc.returncode == 0:  # it ran to the end before the kill
            break
    assert proc.returncode == 0, err[-3000:]
    assert_same_weights(reference, load_checkpoint(killed / "checkpoints" / "last.pt"))
    assert [r["epoch"] for r in metrics(killed)] == [1, 2, 3]
    assert [r["val_acc1"] for r in metrics(killed)] == [r["val_acc1"] for r in metrics(full)]


def test_unreadable_checkpoints_are_refused_without_running_them(tmp_path):
    run = tmp_path / "run"
    train(run, *PROBE)
    good = run / "checkpoints" / "last.pt"

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is not a checkpoint this trainer can read"):
        train(tmp_path / "a", *PROBE, f"resume={truncated}")

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = tmp_path / "hostile.pt"
    torch.save({"model": Payload()}, hostile)
    with pytest.raises(CheckpointError, match="is not a checkpoint this trainer can read"):
        train(tmp_path / "b", *PROBE, f"resume={hostile}")
    assert not marker.exists()

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        train(tmp_path / "c", *PROBE, f"resume={tmp_path / 'nowhere.pt'}")
    with pytest.raises(CheckpointError, match="model.embed_dim=32, this run has 64"):
        train(tmp_path / "d", *PROBE, f"resume={good}", "model.embed_dim=64")


def test_a_damaged_last_checkpoint_falls_back_to_the_newest_readable_one(tmp_path, caplog):
    run, args = tmp_path / "run", [*PROBE, "trainer.epochs=3"]
    train(run, *args)
    folder = run / "checkpoints"
    intact = load_checkpoint(folder / "last.pt")
    assert load_checkpoint(folder / "previous.pt")["epoch"] == 2  # the last.pt before, kept
    for name in ("last.pt", "best.pt"):  # truncated, as by a failing disk
        (folder / name).write_bytes((folder / name).read_bytes()[:1000])

    with caplog.at_level(logging.INFO, logger="vit"):
        train(run, *args, "resume=auto")
    assert "last.pt is not a checkpoint this trainer can read" in caplog.text
    assert f"going on from {folder / 'previous.pt'} (epoch 2, step" in caplog.text
    resumed = load_checkpoint(folder / "last.pt")  # epoch 3 trained again, to the same weights
    assert resumed["epoch"] == 3 and all(torch.equal(t, resumed["model"][k]) for k, t in intact["model"].items())
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]

    for name in CHECKPOINTS:
        (folder / name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="none of the checkpoints in .* can be read") as raised:
        train(run, *args, "resume=auto")
    assert len(str(raised.value).splitlines()) == 1


def test_a_resume_that_would_change_the_run_is_refused(tmp_path):
    run, args = tmp_path / "run", [*PROBE, "trainer.epochs=2", "data.batch_size=64"]
    train(run, *args)
    for override, message in [
        ("data.batch_size=32", "data.batch_size=64, this run has 32"),
        ("trainer.epochs=3", "trainer.epochs=2, this run has 3"),
        ("optim.lr=0.01", "optim.lr="),
        ("seed=7", "seed=0, this run has 7"),
        ("optim=muon", "optim.name=adamw, this run has muon"),
    ]:
        with pytest.raises(CheckpointError, match=message) as raised:
            train(run, *args, override, "resume=auto")
        assert len(str(raised.value).splitlines()) == 1
    # another number of processes: their random streams cannot be shared out again
    state = load_checkpoint(run / "checkpoints" / "previous.pt")
    state["world_size"], state["rng"] = 2, state["rng"] * 2
    two = tmp_path / "two.pt"
    torch.save(state, two)
    with pytest.raises(CheckpointError, match="saved by 2 process.*this run has 1"):
        train(tmp_path / "other", *args, f"resume={two}")
    with pytest.raises(TrainingError, match="has finished all 2 epochs: nothing to train"):
        train(tmp_path / "other", *args, f"resume={run / 'checkpoints' / 'last.pt'}")


def test_resuming_a_checkpoint_without_an_ema_starts_the_ema_from_its_weights(tmp_path):
    train(tmp_path / "a", *PROBE, "trainer.epochs=2")
    start = load_checkpoint(tmp_path / "a" / "checkpoints" / "previous.pt")
    assert start["epoch"] == 1 and start["ema"] is None
    # decay 1: the EMA never moves from where it started
    args = ["trainer.ema=true", "trainer.ema_decay=1.0", f"resume={tmp_path / 'a' / 'checkpoints' / 'previous.pt'}"]
    train(tmp_path / "b", *PROBE, "trainer.epochs=2", *args)
    ema = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["ema"]
    for name, tensor in start["model"].items():
        assert torch.equal(ema[f"module.{name}"], tensor), name


def test_a_checkpoint_saved_before_the_package_moved_still_loads(tmp_path):
    run = tmp_path / "run"
    train(run, *PROBE)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    old = state["config"]
    old["model"]["_target_"] = "vit.model.VisionTransformer"
    old["model"]["pos_embed"]["_target_"] = "vit.pos_embed.learned_1d.Learned1d"
    old["data"]["_target_"] = "vit.data.probe.PositionProbe"
    torch.save(state, tmp_path / "old.pt")
    moved = load_checkpoint(tmp_path / "old.pt")["config"]
    assert moved["model"]["pos_embed"]["_target_"] == "vit.model.pos_embed.learned_1d.Learned1d"
    assert moved["data"]["_target_"] == "vit.training.data.probe.PositionProbe"
    assert moved == load_checkpoint(run / "checkpoints" / "last.pt")["config"]


def test_diverging_loss_stops_naming_the_step(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"loss is (nan|inf|-inf) at step \d+") as error:
        train(
            run,
            *PROBE,
            "data.num_train=512",
            "optim.lr=1e30",
            "optim.warmup_epochs=0",
            "optim.clip_grad=null",
            "trainer.log_every=1",
        )
    assert len(str(error.value).splitlines()) == 1
    assert not (run / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (["data=imagefolder", "data.root={tmp}/nothing"], DataError, "no folder"),
        (["experiment=probe", "data.batch_size=7", "data.mixup=0.5"], ConfigError, "even batch size"),
        (["data=cifar10", "data.policy=autoaugment"], ConfigError, "policy must be one of none, trivialaugment"),
        (["experiment=probe", "model.embed_dim=30"], ConfigError, "embed_dim 30 is not divisible"),
        (["experiment=probe", "trainer.precision=fp8"], ConfigError, "trainer.precision must be"),
        (["experiment=probe", "trainer.eval_every=0"], ConfigError, "trainer.eval_every must be"),
        (["experiment=probe", "optim.name=sgd"], ConfigError, "optim.name must be adamw or muon, got 'sgd'"),
    ],
)
def test_bad_input_raises_one_line(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message) as raised:
        train(tmp_path / "run", *[o.format(tmp=tmp_path) for o in overrides])
    assert len(str(raised.value).splitlines()) == 1


@pytest.mark.parametrize(
    "overrides,message,code",
    [
        (
            ["data=cifar10", "data.root={tmp}/empty", "data.download=false"],
            "cifar10 not found: put cifar-10-python.tar.gz",
            1,
        ),
        (["data=cifar10", "data.policy=autoaugment"], "data: policy must be one of none, trivialaugment", 2),
        (["experiment=probe", "model.embed_dim=30"], "model: embed_dim 30 is not divisible by num_heads 4", 2),
        (["model.img_size=30"], "model: image size 30x30 is not a multiple of the patch size 4", 2),
        (["trainer.precision=fp8"], "trainer.precision must be auto, bf16, fp16 or fp32, got 'fp8'", 2),
    ],
)
def test_bad_input_on_the_command_line_is_one_line(tmp_path, overrides, message, code):
    proc = script(
        "train.py", f"hydra.run.dir={tmp_path / 'run'}", *[o.format(tmp=tmp_path) for o in overrides], cwd=tmp_path
    )
    assert message in one_error_line(proc, code)


def test_a_checkpoint_error_on_the_command_line_is_one_line(tmp_path):
    proc = script(
        "train.py", f"hydra.run.dir={tmp_path / 'run'}", *PROBE, f"resume={tmp_path / 'nowhere.pt'}", cwd=tmp_path
    )
    assert one_error_line(proc, 1) == f"error: no checkpoint at {tmp_path / 'nowhere.pt'}"
    assert "no checkpoint at" in (tmp_path / "run" / "error.txt").read_text()  # for the ablation's report


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["trainer.epoch=3"], ["trainer.epoch"]),
        (["model/pos_embed=foo"], ["foo", "rope_2d", "sincos_2d"]),  # the bad option, and the ones there are
    ],
)
def test_unknown_key_or_option_is_hydras_message(tmp_path, overrides, named):
    proc = script("train.py", f"hydra.run.dir={tmp_path / 'run'}", *overrides, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert all(word in proc.stderr for word in named), proc.stderr
    assert not (tmp_path / "run").exists()


def test_unwritable_run_dir_fails_cleanly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = script("train.py", f"hydra.run.dir={blocker / 'run'}", "experiment=probe", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and str(blocker) in proc.stderr


BAD_VALUE = ["model.embed_dim=30", "model.num_heads=4", "model.depth=1"]


@pytest.mark.parametrize(
    "name,args,message,code",
    [
        ("train.py", BAD_VALUE, "embed_dim 30 is not divisible by num_heads 4", 2),
        ("train.py", ["--help"], "model/pos_embed", 0),  # the help lists the config groups
        ("ablate.py", BAD_VALUE, "embed_dim 30 is not divisible by num_heads 4", 2),
        ("benchmark.py", BAD_VALUE, "embed_dim 30 is not divisible by num_heads 4", 2),
        ("describe.py", BAD_VALUE, "embed_dim 30 is not divisible by num_heads 4", 2),
        ("eval.py", ["checkpoint=x.pt", "resolution=[24]"], "resolution", 1),  # an unknown key, named
    ],
)
def test_every_script_answers_before_importing_torch(tmp_path, name, args, message, code):
    # the command line answers at once: torch and timm take seconds to import
    proc = script(name, *args, cwd=tmp_path, prefix=("-X", "importtime"))
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and not {"torch", "timm", "torchvision"} & imported
    assert proc.returncode == code and message in proc.stdout + proc.stderr


def test_two_gloo_processes_through_torchrun_match_one_process(tmp_path):
    args = [
        "experiment=probe",
        "trainer.epochs=2",
        "data.num_train=512",
        "data.num_val=256",
        "data.batch_size=64",
        "trainer.precision=fp32",  # bf16 (auto on an AMX CPU) rounds a 64-image sum and two 32-image ones apart
        *TINY,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    with torch_threads(1):  # as each torchrun process has
        train(one, *args)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        torchrun + train_command(two, *args)[1:], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = load_checkpoint(one / "checkpoints" / "last.pt"), load_checkpoint(two / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 2 * (512 // 64)  # the same global batches
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=1e-4)
    assert len(b["rng"]) == 2  # every rank's random streams
    for x, y in zip(metrics(one), metrics(two), strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], abs=1e-5)
        assert y["val_acc1"] == pytest.approx(x["val_acc1"], abs=100 / 256 + 1e-9)  # at most one image apart
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2
    # one run directory, written by rank 0 only
    assert len(list(two.glob("events.out.tfevents.*"))) == 1 and len(metrics(two)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_every_process_keeps_rank_0s_ema_under_torchrun(tmp_path):
    run, emas = tmp_path / "run", tmp_path / "emas"
    emas.mkdir()
    args = ["experiment=probe", "trainer.epochs=2", "data.num_train=256", "data.num_val=128", "data.batch_size=64"]
    args += TINY
    # the EMA starts on a resume, from a checkpoint saved without one: where the processes
    # would start from different weights if each made its EMA from its own initialisation
    train(tmp_path / "first", *args)
    state = load_checkpoint(tmp_path / "first" / "checkpoints" / "previous.pt")
    state["world_size"], state["rng"] = 2, state["rng"] * 2  # as if saved by 2 processes
    torch.save(state, tmp_path / "start.pt")
    args += ["trainer.ema=true", "trainer.ema_decay=0.9", f"resume={tmp_path / 'start.pt'}", f"hydra.run.dir={run}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*torchrun, str(ROOT / "tests" / "ema_on_every_rank.py"), str(run), str(emas), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = sorted(emas.glob("ema-step*-rank0.pt"))
    assert len(saved) == 1  # the one epoch left: one checkpoint
    for rank0 in saved:
        ema0, ema1 = torch.load(rank0), torch.load(str(rank0).replace("rank0", "rank1"))
        for name, tensor in ema0.items():
            assert torch.equal(tensor, ema1[name]), f"{rank0.name}: {name} differs on rank 1"

    # the EMA metrics are those of that one EMA: evaluated here, alone, on the whole split
    from vit.cli import compose
    from vit.instantiate import build_model, instantiate_group
    from vit.training.trainer import evaluate

    cfg = compose("train", args)
    model = build_model(cfg)
    model.load_state_dict({k.removeprefix("module."): v for k, v in torch.load(saved[-1]).items()})
    data = instantiate_group(cfg, "data")
    _, val = data.loaders(torch.device("cpu"), 0, 1, cfg.seed)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    alone = evaluate(model, val, mean, std, contextlib.nullcontext)
    logged = metrics(run)[-1]
    assert logged["ema_val_acc1"] == pytest.approx(alone["acc1"], abs=100 / 128 + 1e-9)  # at most one image apart
    assert logged["ema_val_loss"] == pytest.approx(alone["loss"], rel=1e-4)


def test_mixup_checks_each_processs_batch_and_draws_the_same_on_every_process():
    from vit.training.trainer import build_mixup, prepared_batches

    def data(batch_size):
        return SimpleNamespace(mixup=0.8, cutmix=1.0, batch_size=batch_size, num_classes=10)

    with pytest.raises(ConfigError, match="even batch on each process: data.batch_size=6 on 2 processes gives 3"):
        build_mixup(data(6), 0.1, world=2)
    mixup, _ = build_mixup(data(8), 0.1, world=2)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    batches = [(images, torch.arange(4))] * 3  # the same images at every step: only the draws differ
    run = SimpleNamespace(steps_per_epoch=3, mean=torch.zeros(3), std=torch.ones(3), mixup=mixup)
    run.cfg = SimpleNamespace(seed=0)

    def mixed(process_seed, first_batch=0):
        np.random.seed(process_seed)  # each process's own numpy stream
        run.train_batches = batches[first_batch:]
        return [x for x, _ in prepared_batches(run, epoch=1, first_batch=first_batch)]

    rank0, rank1 = mixed(1), mixed(2)
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))  # the same draws everywhere
    assert not torch.equal(rank0[0], rank0[1])  # another step, other draws
    assert all(torch.equal(a, b) for a, b in zip(rank0[1:], mixed(3, first_batch=1), strict=True))  # resumed


class HostEvent:
    """torch.cuda.Event's timing interface, on the host clock: lets the CUDA branch run here."""

    def __init__(self, enable_timing):
        assert enable_timing

    def record(self):
        self.at = time.perf_counter()

    def elapsed_time(self, end):  # milliseconds, like CUDA events
        return 1000 * (end.at - self.at)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_wait_clock_counts_only_the_wait_for_batches(device, monkeypatch):
    from vit.training.wait_clock import WaitClock

    monkeypatch.setattr(torch.cuda, "Event", HostEvent)

    def slow_batches():
        for i in range(3):
            time.sleep(0.05)  # producing a batch
            yield i

    clock = WaitClock(slow_batches(), torch.device(device))
    for _ in clock:
        time.sleep(0.1)  # the step itself is not waiting
    assert 0.15 <= clock.seconds < 0.25


class FillsTheDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written: a full disk."""

    def __init__(self, path, mode, room):
        self.file, self.room = open(path, mode), room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_during_a_save_is_one_line_and_loses_nothing(tmp_path, monkeypatch):
    args = [*PROBE, "trainer.epochs=3"]
    full = tmp_path / "full"
    train(full, *args)

    run = tmp_path / "run"
    saves = []

    def open_on_a_filling_disk(path, mode="r", *rest, **kwargs):
        if "w" in mode and str(path).endswith("last.pt.tmp"):
            saves.append(path)
            if len(saves) == 2:  # the second epoch's last.pt meets a full disk
                return FillsTheDisk(path, mode, room=10_000)
        return open(path, mode, *rest, **kwargs)

    monkeypatch.setattr(checkpoint, "open", open_on_a_filling_disk, raising=False)
    with pytest.raises(CheckpointError) as error:
        train(run, *args)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "the disk is full" in message and str(run / "checkpoints") in message
    assert not list(run.glob("checkpoints/*.tmp"))  # no partial file left filling the disk
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # the previous checkpoint, intact

    monkeypatch.undo()  # room again: the run goes on where it stood
    train(run, *args, "resume=auto")
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.equal(t, b["model"][k]) for k, t in a["model"].items())


def test_a_failed_write_of_another_kind_keeps_its_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in serialisation")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    (tmp_path / "last.pt").write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="a bug in serialisation"):
        checkpoint.save_atomic({"x": 1}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert (tmp_path / "last.pt").read_bytes() == b"previous"


def test_a_second_sigterm_waits_for_the_save_and_a_second_ctrl_c_kills():
    # a scheduler, or an ablation's runs when it dies, may send SIGTERM twice: the run still
    # saves; a person pressing Ctrl-C twice means it, and the default handler is back
    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) == stop.handle
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    finally:
        stop.restore()


def test_a_run_resumed_on_another_thread_count_says_so():
    from vit.training.trainer import threads_trained

    now = torch.get_num_threads()
    assert threads_trained([{"threads": 3}, {"threads": 3}]) == 3
    assert threads_trained([{"threads": 3}, {"threads": 1}, {"threads": 3}]) == [1, 3]
    assert threads_trained([{}, {"threads": now + 1}]) == [now, now + 1]  # an epoch logged before threads were
    assert threads_trained([]) == now
