"""The ablation end to end on tiny settings: report, idempotence, failures, and eval.py."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import DEVICES, tiny_vit
from runs import train
from vit.cli import compose
from vit.folder_lock import in_use
from vit.studies import ablation, report
from vit.studies.ablation import folder_name, grid_of, grid_points, run_sweep
from vit.studies.evaluation import evaluate_checkpoint
from vit.threads import torch_threads

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "trainer.epochs=1",
    "data.num_train=256",
    "data.num_val=128",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
]


def ablate(cwd, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ablate.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ablation_report_failures_and_a_second_invocation_that_retrains_only_what_failed(tmp_path):
    # 16 heads of width 2: rope_2d needs a head width divisible by 4, none and learned_1d do not
    args = ["ablation.schemes=[none,learned_1d,rope_2d]", *TINY, "model.num_heads=16"]
    first = ablate(tmp_path, *args)
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-3000:]  # one run failed, the others finished
    out = tmp_path / "outputs" / "ablations" / "quick"
    for name in ("results.csv", "summary.csv", "report.md", "curves.png", "resolutions.png", "attention_distance.png"):
        assert (out / name).stat().st_size > 0, name

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["scheme"], r["seed"], r["status"]) for r in rows] == [
        ("none", "0", "finished"),
        ("learned_1d", "0", "finished"),
        ("rope_2d", "0", "failed"),
    ]
    for row in rows[:2]:  # the evaluation of last.pt gives the accuracy training logged
        assert float(row["eval_acc1"]) == float(row["final_acc1"])
        assert {"acc1_at_8px", "acc1_at_16px", "acc1_at_24px", "shuffled_acc1"} <= row.keys()  # 12 px: 0.75x to 2x
    none = rows[0]
    assert float(none["shuffled_acc1"]) == float(none["final_acc1"])  # no positions: shuffling changes nothing
    assert "head width" in rows[2]["error"]
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["label"], r["seeds"]) for r in summary][:2] == [("none", "1"), ("learned_1d", "1")]
    report = (out / "report.md").read_text()
    assert (
        "| none | 1 |" in report and "| learned_1d | 1 |" in report and "![validation accuracy](curves.png)" in report
    )
    assert "## Runs that did not finish" in report and "rope_2d_seed0" in report
    # a line per run while the checkpoints are evaluated, so a long evaluation is never silent
    evaluating = [line for line in first.stdout.splitlines() if line.startswith("evaluat")]
    assert evaluating[0::2] == ["evaluating none_seed0 ...", "evaluating learned_1d_seed0 ..."]
    assert [line.split(":")[0] for line in evaluating[1::2]] == ["evaluated none_seed0", "evaluated learned_1d_seed0"]
    assert all(" acc1 " in line and " shuffled " in line for line in evaluating[1::2])
    # runs are named by scheme and seed, for TensorBoard
    assert sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) == [
        "learned_1d_seed0",
        "none_seed0",
        "rope_2d_seed0",
    ]

    checkpoints = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoints/*.pt")}
    assert len(checkpoints) == 4  # last.pt and best.pt of the two that finished
    second = ablate(tmp_path, *args)
    assert second.returncode == 1 and "1 of 3 runs of quick to train" in second.stdout
    assert "evaluating" not in second.stdout  # eval.json of the finished runs is kept
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoints/*.pt")} == checkpoints
    report = (out / "report.md").stat().st_mtime_ns
    look = ablate(tmp_path, *args, "train=false")  # a look at an ablation: trains nothing, reports
    assert look.returncode == 0 and "to train" not in look.stdout and "report: " in look.stdout
    assert (out / "report.md").stat().st_mtime_ns > report
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoints/*.pt")} == checkpoints

    # a fresh clone: the committed rows alone rebuild the same tables, with no run folder at all
    committed = [json.loads(line) for line in (tmp_path / "results" / "ablations" / "quick.jsonl").open()]
    assert sorted(r["run"] for r in committed) == ["learned_1d_seed0", "none_seed0"]  # the failed run has none
    before = {r["scheme"]: r for r in csv.DictReader(open(out / "results.csv")) if r["status"] == "finished"}
    shutil.rmtree(out)
    clone = ablate(tmp_path, *args, "train=false")
    assert clone.returncode == 0 and "evaluating" not in clone.stdout, clone.stderr[-3000:]
    after = {r["scheme"]: r for r in csv.DictReader(open(out / "results.csv")) if r["status"] == "finished"}
    assert after == before
    assert "| none | 1 |" in (out / "report.md").read_text() and (out / "curves.png").stat().st_size > 0


def test_an_ablation_whose_runs_all_finished_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: pytest.fail("a sweep was started"))
    cfg = compose("ablate", ["ablation.schemes=[none,rope_2d]", "ablation.seeds=[0,1]"]).ablation
    for point in grid_points(grid_of(cfg)):
        (tmp_path / "runs" / folder_name(point)).mkdir(parents=True)
        (tmp_path / "runs" / folder_name(point) / "summary.json").write_text("{}")
    assert run_sweep(cfg, tmp_path, []) == 0
    assert "all 4 runs of quick have finished; nothing to train" in capsys.readouterr().out


def test_a_sweep_first_commits_what_finished_before_it_started(tmp_path, monkeypatch):
    # a run trained by hand, or in a sitting cut short before its row was written, is committed
    # before hours of training start, not after them
    events = []

    class Book:  # the part of ablation.Book a sweep uses
        ledger, same_machine = None, False

        def row(self, point):
            return {"run": "committed"} if point["model/pos_embed"] == "rope_2d" else None

        def commit(self, point):
            events.append(("commit", folder_name(point)))

    monkeypatch.setattr(
        ablation, "run_in_parallel", lambda commands, folders, jobs, finished: events.append(("train", len(folders)))
    )
    cfg = compose("ablate", ["ablation.schemes=[none,learned_1d,rope_2d]"]).ablation
    for name in ("none_seed0", "rope_2d_seed0"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text("{}")
    run_sweep(cfg, tmp_path, [], book=Book())
    assert events == [("commit", "none_seed0"), ("train", 1)]  # rope_2d had its row; learned_1d trains


def test_a_sweep_trains_every_scheme_of_a_seed_before_the_next_seed(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(
        subprocess, "run", lambda command, **_: started.append(command) or subprocess.CompletedProcess(command, 0)
    )
    cfg = compose("ablate", ["ablation.schemes=[none,rope_2d]", "ablation.seeds=[0,1]"]).ablation
    cfg.vary = {"model.pool": ["gap", "cls"]}
    assert run_sweep(cfg, tmp_path, ["hydra/launcher=basic"]) == 0  # a launcher: the grid as one multirun
    keys = [arg.split("=")[0] for arg in started[0]]
    grid = [key for key in keys if key in ("seed", "model/pos_embed", "model.pool")]
    assert grid == ["seed", "model/pos_embed", "model.pool"]  # Hydra's sweeper varies the last fastest


def test_jobs_run_single_runs_seed_major_into_the_sweep_folders(tmp_path, monkeypatch):
    given = []
    monkeypatch.setattr(
        ablation, "run_in_parallel", lambda commands, folders, jobs, finished: given.append((commands, folders)) or 0
    )
    cfg = compose("ablate", ["ablation.schemes=[none,rope_2d]", "ablation.seeds=[0,1]"]).ablation
    assert run_sweep(cfg, tmp_path, ["trainer.epochs=3"], jobs=2) == 0
    commands, folders = given[0]
    assert [f.name for f in folders] == ["none_seed0", "rope_2d_seed0", "none_seed1", "rope_2d_seed1"]
    for command, folder in zip(commands, folders, strict=True):
        assert "-m" not in command and "trainer.epochs=3" in command and "resume=auto" in command
        assert command[-1] == f"hydra.run.dir={tmp_path / 'runs' / folder.name}"


def test_parallel_runs_share_the_cores_and_report_each_ending(tmp_path, monkeypatch, capsys):
    envs = []

    class Failing:  # a run that fails at once
        def __init__(self, command, env, **_):
            envs.append(env)

        def wait(self):
            return 1

    monkeypatch.setattr(subprocess, "Popen", Failing)
    folders = [tmp_path / "a_seed0", tmp_path / "b_seed0"]
    assert ablation.run_in_parallel([["x"], ["y"]], folders, jobs=2) == 1
    assert [e["OMP_NUM_THREADS"] for e in envs] == [str(max(1, len(os.sched_getaffinity(0)) // 2))] * 2
    out = capsys.readouterr().out
    assert "failed 1/2: a_seed0 (exit 1" in out and "failed 2/2: b_seed0 (exit 1" in out


def test_the_next_run_trains_while_a_finished_one_is_evaluated(tmp_path):
    folders = [tmp_path / "a_seed0", tmp_path / "b_seed0"]
    write = "import json, pathlib, sys; pathlib.Path(sys.argv[1]).write_text(json.dumps({'final_val_acc1': 50.0}))"
    commands = [[sys.executable, "-c", write, str(f / "summary.json")] for f in folders]
    seen = []

    def evaluate_a():  # evaluating run a takes until run b has finished training
        deadline = time.time() + 30
        while not (folders[1] / "summary.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        seen.append(("a", (folders[1] / "summary.json").exists()))

    assert ablation.run_in_parallel(commands, folders, 1, [evaluate_a, lambda: seen.append(("b", True))]) == 0
    assert seen == [("a", True), ("b", True)]  # b trained meanwhile; evaluations in order, one at a time


def test_evaluations_beside_the_runs_share_the_cores_and_the_threads_are_put_back(tmp_path):
    # a process that goes on to train (a notebook, the test suite) keeps its own thread count
    import torch

    share = max(1, len(os.sched_getaffinity(0)) // 2)
    folders = [tmp_path / "a_seed0", tmp_path / "b_seed0"]
    write = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('{\"final_val_acc1\": 50.0}')"
    commands = [[sys.executable, "-c", write, str(f / "summary.json")] for f in folders]
    seen = []
    with torch_threads(share + 1):
        finished = [lambda: seen.append(torch.get_num_threads())] * 2
        assert ablation.run_in_parallel(commands, folders, 2, finished) == 0
        assert seen == [share, share] and torch.get_num_threads() == share + 1


# a stand-in for scripts/train.py: marks that it started, and on SIGTERM marks that it saved
# and exits as train.py does once a signal made it save (128 + 15)
RUN = """import pathlib, signal, sys, time
folder = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (folder.joinpath("saved").touch(), sys.exit(143)))
folder.joinpath("started").touch()
time.sleep(60)
"""


def test_sigterm_to_a_sweep_makes_the_runs_under_way_save_starts_no_more_and_says_so(tmp_path, capsys):
    folders = [tmp_path / f"{name}_seed0" for name in ("a", "b", "c")]
    commands = [[sys.executable, "-c", RUN, str(folder)] for folder in folders]

    def terminate_once_a_started():
        deadline = time.time() + 60
        while not (folders[0] / "started").exists() and time.time() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)  # to this process only, as a scheduler would send it

    threading.Thread(target=terminate_once_a_started, daemon=True).start()
    started = time.time()
    assert ablation.run_in_parallel(commands, folders, jobs=1, finished=[lambda: None] * 3) == 128 + signal.SIGTERM
    assert time.time() - started < 30  # a did not sleep its minute out
    assert (folders[0] / "saved").exists()
    assert not any((f / "started").exists() for f in folders[1:])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the sweep's handler is gone again
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("stopped 1/3: a_seed0 after")
    assert out[-1].startswith("stopped by signal 15 (runs: 1 saved where they were, 2 not started, 0 finished")


def test_a_stopped_ablation_exits_with_one_line_and_its_run_saved(tmp_path):
    args = ["ablation.schemes=[none]", *TINY, "trainer.epochs=3", "data.num_train=1024"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "ablate.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "outputs" / "ablations" / "quick" / "runs" / "none_seed0"
    deadline = time.time() + 300
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, "the ablation ended before it could be stopped"
        time.sleep(0.02)
    proc.terminate()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:] + err[-2000:]
    assert "Traceback" not in err and out.splitlines()[-1].startswith("stopped by signal 15")
    assert (run / "checkpoints" / "last.pt").exists() and not (run / "summary.json").exists()
    assert not (run.parents[1] / "report.md").exists()  # resuming it is the kill test's (below)


def test_ablate_refuses_jobs_it_cannot_honour(tmp_path):
    for args, message in (
        (["jobs=0"], "jobs=0"),
        (["jobs=2", "hydra/launcher=submitit_slurm"], "leave jobs at 1"),
    ):
        result = ablate(tmp_path, *args)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("device", DEVICES)
def test_eval_script_matches_what_training_logged(tmp_path, device):
    run = tmp_path / "run"  # bf16, as on a GPU, and test-time augmentation: the evaluation must take the run's own
    tiny = ["trainer.epochs=1", "trainer.precision=bf16", "trainer.tta=flip_shift", "model.embed_dim=32"]
    tiny += ["model.depth=1", "model.num_heads=2"]
    train(run, "experiment=digits", f"trainer.device={device}", *tiny)
    evaluated = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "eval.py"),
            f"checkpoint={run / 'checkpoints' / 'last.pt'}",
            "resolutions=[12,24]",
            f"device={device}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout)
    logged = json.loads((run / "summary.json").read_text())
    assert result["acc1"] == logged["final_val_acc1"] and (result["precision"], result["tta"]) == ("bf16", "flip_shift")
    fp32 = evaluate_checkpoint(run / "checkpoints" / "last.pt", resolutions=[], precision="fp32")
    assert fp32["precision"] == "fp32" and abs(fp32["acc1"] - result["acc1"]) < 5
    assert set(result["acc1_at"]) == {"12", "24"} and 0 <= result["shuffled_acc1"] <= 100
    distances = torch.tensor(result["attention_distance_px"])  # 1 block, 2 heads; 4x4 patches of 4 px
    assert distances.shape == (1, 2) and ((distances > 0) & (distances < 12 * 2**0.5)).all()

    missing = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "eval.py"), f"checkpoint={tmp_path / 'no.pt'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert missing.returncode == 1 and missing.stderr.strip() == f"error: no checkpoint at {tmp_path / 'no.pt'}"


def test_paired_differences_and_intervals_say_what_is_resolved(tmp_path):
    from scipy import stats

    from vit.studies.ablation import Run, ci95, paired_differences

    def run(scheme, seed, acc):
        return Run(
            {"model/pos_embed": scheme, "seed": str(seed)}, tmp_path, "finished", summary={"final_val_acc1": acc}
        )

    runs = [run("none", s, a) for s, a in enumerate([50.0, 52.0, 51.0])]
    runs += [run("learned_1d", s, a) for s, a in enumerate([60.0, 61.0, 62.0])]
    runs += [run("rope_2d", s, a) for s, a in enumerate([60.5, 60.0, 63.0])]
    runs += [replace(run("rope_2d", 3, 99.0), cpu="another CPU"), replace(run("none", 3, 10.0), cpu="a third")]
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / 3**0.5)
    pairs = {(p["label"], p["baseline"]): p for p in paired_differences(runs)}
    ahead = pairs["rope_2d", "none"]  # +10.5, +8, +12: paired, the seeds' common part cancels
    assert ahead["n"] == 3 and ahead["mean"] == pytest.approx(10.1666, abs=1e-3) and ahead["resolved"]
    close = pairs["rope_2d", "learned_1d"]  # +0.5, -1, +1: not resolved
    assert close["mean"] == pytest.approx(1 / 6) and not close["resolved"]
    assert ("none", "none") not in pairs and ("none", "learned_1d") in pairs


def test_holm_step_down_stops_at_the_first_p_over_its_threshold():
    from scipy import stats

    from vit.studies.ablation import holm, p_value

    assert p_value([0.5, -1.0, 1.0]) == pytest.approx(stats.ttest_1samp([0.5, -1.0, 1.0], 0).pvalue)
    assert p_value([0.3, 0.3]) == 0.0 and p_value([0.0, 0.0]) == 1.0 and p_value([0.3]) != p_value([0.3])

    def family(*ps):
        return [{"label": str(i), "n": 3, "p": p} for i, p in enumerate(ps)] + [{"label": "one seed", "n": 1, "p": 0.0}]

    rows = family(0.04, 0.001, 0.02)  # thresholds 0.05/3, 0.05/2, 0.05: all pass
    holm(rows)
    assert [r["holm"] for r in rows] == [True, True, True, False]  # one seed is no test
    rows = family(0.04, 0.001, 0.03)  # 0.03 > 0.025 stops the run: 0.04 fails too, below 0.05
    holm(rows)
    assert [r["holm"] for r in rows] == [False, True, False, False]


def test_the_report_says_which_differences_survive_the_correction(tmp_path):
    from vit.studies.ablation import Run, paired_differences

    def run(scheme, seed, acc):
        return Run(
            {"model/pos_embed": scheme, "seed": str(seed)}, tmp_path, "finished", summary={"final_val_acc1": acc}
        )

    learned = [90.0, 91.0, 92.0]
    runs = [run("learned_1d", s, a) for s, a in enumerate(learned)]
    runs += [run("far", s, a + 5.0) for s, a in enumerate(learned)]  # p = 0: survives
    runs += [run("near", s, a + d) for s, (a, d) in enumerate(zip(learned, [0.4, 0.8, 0.6], strict=True))]  # p 0.035
    runs += [
        run(f"same{k}", s, a + d) for k in range(4) for s, (a, d) in enumerate(zip(learned, [-1, 1, 0.5], strict=True))
    ]
    pairs = [p for p in paired_differences(runs) if p["baseline"] == "learned_1d"]
    near = next(p for p in pairs if p["label"] == "near")
    assert near["resolved"] and 0.05 / 5 < near["p"] < 0.05 and not near["holm"]
    text = "\n".join(report.differences_section(pairs))
    holm = "Corrected for all 6 comparisons against learned_1d (Holm, 5% family-wise): still resolved: `far`"
    assert holm + "; no longer: `near`." in text


def test_a_varied_key_is_compared_scheme_by_scheme_and_seed_by_seed(tmp_path):
    from vit.studies.ablation import Run, varied_differences

    def runs(scheme, pool, accs):
        point = {"model/pos_embed": scheme, "model.pool": pool}
        return [Run({**point, "seed": str(s)}, tmp_path, "finished", summary={"final_val_acc1": a}) for s, a in accs]

    grid = runs("none", "cls", [(0, 80.0), (1, 81.0), (2, 82.0)])
    grid += runs("none", "gap", [(0, 85.0), (1, 86.0), (2, 88.0)])
    grid += runs("learned_1d", "cls", [(0, 90.0), (1, 90.5), (2, 91.0)])
    grid += runs("learned_1d", "gap", [(0, 90.5), (1, 90.0)])  # seed 2 unfinished: two pairs
    other_cpu = Run({"model/pos_embed": "learned_1d", "model.pool": "gap", "seed": "2"}, tmp_path, "finished")
    grid += [replace(other_cpu, summary={"final_val_acc1": 95.0}, cpu="another CPU")]  # pairs nothing
    rows = {r["label"]: r for r in varied_differences(grid)}
    assert set(rows) == {"none", "learned_1d", "every scheme"}
    none, learned, pooled = rows["none"], rows["learned_1d"], rows["every scheme"]
    assert (none["key"], none["reference"], none["value"], none["n"]) == ("pool", "cls", "gap", 3)
    assert none["mean"] == pytest.approx(16 / 3) and none["resolved"]  # +5, +5, +6
    assert learned["n"] == 2 and learned["mean"] == pytest.approx(0.0) and not learned["resolved"]
    assert (pooled["n"], pooled["above"]) == (5, 4) and pooled["mean"] == pytest.approx(16 / 5)  # +5 +5 +6 +0.5 -0.5
    assert "holm" not in pooled and "holm" in none  # a summary, not a member of the corrected family
    text = "\n".join(report.varied_section(list(rows.values())))
    assert "| none | pool: cls → gap | **+5.33 ± " in text and "| learned_1d | pool: cls → gap | +0.00 ± " in text
    assert "| *every scheme* | pool: cls → gap | " in text and " (5 pairs, 4 above zero)" in text
    assert "Corrected for all 2 comparisons of pool" in text  # the pooled row is no comparison of its own


def test_the_report_says_when_its_runs_trained_on_different_thread_counts(tmp_path):
    from vit.studies.ablation import Run

    def run(seed, threads=None, status="finished"):
        summary = {"final_val_acc1": 90.0} | ({"threads": threads} if threads else {})
        evaluation = {"img_size": 28, "acc1": 90.0, "acc1_at": {}}
        point = {"model/pos_embed": "none", "seed": str(seed)}
        return Run(point, tmp_path, status, summary=summary, evaluation=evaluation)

    assert report.threads_note([run(0, 1), run(1, 1), run(2)]) == ""  # one known count: nothing to say
    assert report.threads_note([run(0, 1), run(1, 2, status="failed")]) == ""
    note = report.threads_note([run(0, 1), run(1, 1), run(2, 2), run(3)])
    counts = "(2 on 1 thread, 1 on 2 threads, 1 not recorded)"
    assert note.startswith(f"These runs trained on different thread counts {counts}")
    resumed = report.threads_note([run(0, 1), run(1, [1, 2])])  # run 1's epochs trained on both
    assert "(1 on 1 thread, 1 resumed on another count)" in resumed
    alone = report.threads_note([run(0, [1, 2])])  # the only run, mixed within itself
    assert alone.startswith("These runs trained on different thread counts (1 resumed on another count)")
    report.write_report("mixed", [run(0, 1), run(1, 2)], tmp_path, "python scripts/ablate.py", note="A machine.")
    text = (tmp_path / "report.md").read_text()
    assert "A machine.\n\nThese runs trained on different thread counts (1 on 1 thread, 1 on 2 threads)" in text


def test_evaluation_breaks_ties_as_training_does():
    # bf16 logits tie often; argmax and the trainer's top-k disagree on a third of these images
    from contextlib import nullcontext

    from vit.studies.evaluation import accuracy
    from vit.training.trainer import evaluate

    class Tied(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10].round()

    generator = torch.Generator().manual_seed(0)
    images, labels = (
        torch.randn(512, 1, 4, 4, generator=generator) * 2,
        torch.randint(0, 10, (512,), generator=generator),
    )
    batches = [(images[i : i + 128], labels[i : i + 128]) for i in range(0, 512, 128)]
    mean, std = torch.zeros(1), torch.ones(1)
    logged = evaluate(Tied(), batches, mean, std, nullcontext)["acc1"]
    assert accuracy(Tied(), batches, mean, std) == pytest.approx(logged, abs=1e-9)


def test_the_shuffle_moves_tokens_so_a_tokenizer_keeps_them_whole():
    from vit.studies.evaluation import shuffle_patches, shuffled_tokens

    images = torch.randn(8, 3, 16, 16)
    patchify = tiny_vit("conv", "gap", "learned_1d").eval()
    with torch.no_grad(), shuffled_tokens(patchify, torch.Generator().manual_seed(0)):
        tokens_moved = patchify(images)  # patch-wise: the same as moving the image's patches
    patches_moved = patchify(shuffle_patches(images, 4, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(tokens_moved, patches_moved.detach())
    # no positions and average pooling: blind to the order of whole tokens, whatever the embedding
    tokenizer = tiny_vit("conv_tokenizer", "gap", "none").eval()
    with torch.no_grad(), shuffled_tokens(tokenizer, torch.Generator().manual_seed(0)):
        shuffled = tokenizer(images)
    torch.testing.assert_close(shuffled, tokenizer(images).detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tokenizer(shuffle_patches(images, 4, torch.Generator().manual_seed(0))), shuffled)


def test_the_curves_plot_only_the_epochs_that_were_evaluated(tmp_path, monkeypatch):
    def history(accs):  # trainer.eval_every=2 over 3 epochs: the 2nd and the last scored
        return [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "val_acc1": accs[0]}, {"epoch": 3, "val_acc1": accs[1]}]

    runs = [
        ablation.Run({"seed": str(seed)}, tmp_path / str(seed), "finished", history=history(accs))
        for seed, accs in enumerate([(50.0, 60.0), (54.0, 70.0)])
    ]
    plotted = []

    def keep_lines(fig, ax, path, **labels):
        plotted.extend(ax.get_lines())
        report.plt.close(fig)

    monkeypatch.setattr(report, "save_axes", keep_lines)
    report.plot_curves(runs, tmp_path / "curves.png")
    (line,) = plotted
    assert list(line.get_xdata()) == [2, 3]
    assert list(line.get_ydata()) == pytest.approx([52.0, 65.0])


ACCURACY = ("scheme", "seed", "status", "best_acc1", "final_acc1", "eval_acc1", "shuffled_acc1")


def accuracy_rows(out: Path) -> list[tuple]:
    """results.csv without its timings (images/s and wall time differ from sitting to sitting)."""
    rows = list(csv.DictReader(open(out / "results.csv")))
    return [tuple(r[k] for k in ACCURACY) + tuple(v for k, v in r.items() if k.startswith("acc1_at_")) for r in rows]


def test_jobs_train_the_grid_in_parallel_and_a_kill_while_they_train_loses_nothing(tmp_path):
    args = ["ablation.schemes=[none,learned_1d]", *TINY, "trainer.epochs=3", "data.num_train=1024", "jobs=2"]
    (tmp_path / "uncut").mkdir()
    result = ablate(tmp_path / "uncut", *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 of 2 runs of quick to train, 2 at a time" in result.stdout
    trained = [line.split(",")[0].split(": ")[1] for line in result.stdout.splitlines() if line.startswith("trained ")]
    assert sorted(trained) == ["learned_1d_seed0", "none_seed0"]  # into the folders a sweep uses
    rows = list(csv.DictReader(open(tmp_path / "uncut" / "outputs" / "ablations" / "quick" / "results.csv")))
    assert [(r["scheme"], r["status"]) for r in rows] == [("none", "finished"), ("learned_1d", "finished")]
    assert all(float(r["eval_acc1"]) == float(r["final_acc1"]) for r in rows)

    cut = tmp_path / "cut"
    cut.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "ablate.py"), *args], cwd=cut)
    runs = cut / "outputs" / "ablations" / "quick" / "runs"
    logs = [runs / name / "metrics.jsonl" for name in ("none_seed0", "learned_1d_seed0")]
    deadline = time.time() + 300
    while not any(log.exists() and log.read_text().strip() for log in logs):  # an epoch done, others under way
        assert proc.poll() is None and time.time() < deadline, "the ablation ended before it could be killed"
        time.sleep(0.02)
    proc.kill()  # kill -9: no chance to clean up; its runs are told to save and stop
    proc.wait()
    deadline = time.time() + 120
    while any(in_use(runs / name, "run folder") for name in ("none_seed0", "learned_1d_seed0")):
        assert time.time() < deadline, "a run trained on after its ablation was killed"
        time.sleep(0.05)
    assert not all((runs / name / "summary.json").exists() for name in ("none_seed0", "learned_1d_seed0"))
    again = ablate(cut, *args)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    out = Path("outputs") / "ablations" / "quick"
    assert accuracy_rows(cut / out) == accuracy_rows(tmp_path / "uncut" / out)  # the CPU is deterministic
