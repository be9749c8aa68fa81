"""End to end: training on real formats, what a run leaves behind, and never losing work.

Runs train in this process (`runs.train`, composed as scripts/train.py composes); only what
is about the command line starts `scripts/train.py`: exit codes and one-line errors, a real
SIGTERM, torchrun.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_files import make_cifar10_archive, make_class_folders
from runs import TINY, metrics, one_error_line, script, train, train_command
from vit.cli import ConfigError
from vit.errors import TrainingError
from vit.training import checkpoint
from vit.training.checkpoint import CheckpointError, load_checkpoint
from vit.training.data import DataError

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


def test_probe_run(tmp_path):
    summary = train(tmp_path / "run", *PROBE)
    assert summary["data"] == "probe" and 0 <= summary["final_val_acc1"] <= 100
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]["head.weight"].shape == (4, 32)


def test_training_from_python_without_hydras_run_state(tmp_path):
    # the README's "From Python": a composed config and a folder, nothing else
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
    run = tmp_path / "run"
    train(run, *common, "data.num_classes=3", "data.policy=trivialaugment")
    assert metrics(run)[0]["val_acc1"] * 12 / 100 == pytest.approx(round(metrics(run)[0]["val_acc1"] * 12 / 100))
    subset = tmp_path / "subset"
    train(subset, *common, "data.num_classes=2", "data.classes=[dog,fox]")
    assert load_checkpoint(subset / "checkpoints" / "last.pt")["model"]["head.weight"].shape[0] == 2
    with pytest.raises(DataError, match="3 classes under"):
        train(tmp_path / "mismatch", *common, "data.num_classes=5")


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


def test_interrupted_run_resumes_to_bit_identical_weights(tmp_path):
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
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(cut / "checkpoints" / "last.pt")
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs"
    assert [r["epoch"] for r in metrics(cut)] == [1, 2, 3]  # each epoch logged once
    assert [r["val_acc1"] for r in metrics(cut)] == [r["val_acc1"] for r in metrics(full)]
    events = EventAccumulator(str(cut))
    events.Reload()
    assert len(events.Scalars("val/acc1")) == 3

    # a finished run, resumed again, trains nothing and keeps its summary
    summary = (cut / "summary.json").read_text()
    assert train(cut, *args, "resume=auto") == json.loads(summary)
    assert (cut / "summary.json").read_text() == summary


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
        *TINY,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process has
    try:
        train(one, *args)
    finally:
        torch.set_num_threads(threads)
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
