"""Committed result rows: written whole, read back exactly, and standing in for their runs."""

import json

import pytest
from omegaconf import OmegaConf

from runs import one_error_line, script, train
from vit.cli import compose
from vit.studies import ablation, results
from vit.studies.ablation import Book, collect, folder_name, grid_of, grid_points, result_rows, run_sweep
from vit.studies.results import Ledger, ResultsError, config_key, make_row, read_rows

SUMMARY = {"final_val_acc1": 91.5, "best_val_acc1": 91.7, "params": 1000, "overrides": ["seed=0"], "epochs": 3}
EVALUATION = {"checkpoint": "/somewhere/last.pt", "acc1": 91.5, "acc1_at": {"20": 80.0}, "shuffled_acc1": 40.0}
TINY_RUN = ["trainer.epochs=1", "data.num_train=128", "data.num_val=64", "model.embed_dim=32", "model.depth=1"]
HISTORY = [{"epoch": 1, "train_loss": 1.2, "lr": 0.1, "val_acc1": 88.0}, {"epoch": 2, "val_acc1": 91.5, "x": 1}]


def quick(schemes: str = "[none,rope_2d]"):
    cfg = compose("ablate", [f"ablation.schemes={schemes}"]).ablation
    points = grid_points(grid_of(cfg))
    return cfg, points, {folder_name(p): f"key-of-{folder_name(p)}" for p in points}


def test_rows_read_back_as_written_and_keep_no_paths(tmp_path):
    path = tmp_path / "results" / "study.jsonl"
    ledger = Ledger(path)
    row = make_row("study", "none_seed0", {"model/pos_embed": "none", "seed": "0"}, "k1", SUMMARY, EVALUATION, HISTORY)
    ledger.add(row)
    ledger.add(make_row("study", "a_seed1", {"seed": "1"}, "k2", SUMMARY, EVALUATION, HISTORY))
    assert [r["run"] for r in read_rows(path)] == ["a_seed1", "none_seed0"]  # one order, whatever finished first
    assert read_rows(path)[1] == json.loads(json.dumps(row))
    assert not list(path.parent.glob("*.tmp"))  # replaced whole
    assert "checkpoint" not in row["evaluation"] and "overrides" not in row["summary"]
    assert row["overrides"] == ["seed=0"] and row["history"][1] == {"epoch": 2, "val_acc1": 91.5}
    assert Ledger(path).get("k1") == json.loads(json.dumps(row))


def test_a_run_two_studies_share_is_found_in_the_other_studys_file(tmp_path):
    Ledger(tmp_path / "fmnist_patch.jsonl").add(make_row("fmnist_patch", "r", {}, "shared", SUMMARY, {}, []))
    pooled = Ledger.in_folder(tmp_path, "fmnist_patch_pool")
    assert pooled.get("shared")["ablation"] == "fmnist_patch" and pooled.get("other") is None
    assert pooled.path == tmp_path / "fmnist_patch_pool.jsonl" and not pooled.path.exists()
    assert pooled.file_of("shared") == tmp_path / "fmnist_patch.jsonl"  # what ablate.py names
    pooled.add(make_row("fmnist_patch_pool", "gap", {}, "own", SUMMARY, {}, []))
    assert pooled.file_of("own") == pooled.path


def test_a_damaged_results_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "study.jsonl"
    good = json.dumps(make_row("study", "r", {}, "k", SUMMARY, {}, []))
    for damaged in (good + "\n" + good[: len(good) // 2] + "\n", good + "\n[1, 2]\n"):
        path.write_text(damaged)
        with pytest.raises(ResultsError, match=rf"{path}, line 2: .*git checkout -- {path}"):
            read_rows(path)


def test_the_config_key_follows_what_the_run_computes_not_how_it_resumes():
    base = compose("train", ["experiment=digits"])
    assert config_key(base) == config_key(compose("train", ["experiment=digits", "resume=auto"]))
    assert config_key(base) != config_key(compose("train", ["experiment=digits", "trainer.epochs=61"]))
    assert config_key(base) != config_key(compose("train", ["experiment=digits", "model/pos_embed=rope_2d"]))


def test_a_committed_row_stands_in_for_its_run_and_a_stale_one_does_not(tmp_path, monkeypatch, capsys):
    cfg, points, keys = quick()
    ledger = Ledger(tmp_path / "quick.jsonl")
    ledger.add(make_row("quick", "none_seed0", points[0], keys["none_seed0"], SUMMARY, EVALUATION, HISTORY))
    ledger.add(make_row("quick", "rope_2d_seed0", points[1], "a-config-since-changed", SUMMARY, EVALUATION, HISTORY))
    started = []
    monkeypatch.setattr(
        ablation, "run_in_parallel", lambda commands, folders, jobs, finished: started.extend(folders) or 0
    )
    book = Book(cfg, tmp_path / "out", Ledger(tmp_path / "quick.jsonl"), keys)
    assert run_sweep(cfg, tmp_path / "out", [], 1, book) == 0
    assert [f.name for f in started] == ["rope_2d_seed0"]  # the stale row does not count
    assert f"1 runs of quick are committed in {tmp_path / 'quick.jsonl'}" in capsys.readouterr().out

    runs = collect(cfg, tmp_path / "out", "cpu", book)
    assert [(r.scheme, r.status) for r in runs] == [("none", "finished"), ("rope_2d", "missing")]
    row = result_rows(runs)[0]
    assert (row["final_acc1"], row["eval_acc1"], row["acc1_at_20px"], row["shuffled_acc1"]) == (91.5, 91.5, 80.0, 40.0)
    assert runs[0].history == [{"epoch": 1, "train_loss": 1.2, "val_acc1": 88.0}, {"epoch": 2, "val_acc1": 91.5}]


def finished_run_folder(tmp_path):
    """ablation=quick's none_seed0, trained in its folder as ablate.py would, with the config
    Hydra stores beside it; the ablation, its folder, the run's overrides and config."""
    cfg = compose("ablate", ["ablation.schemes=[none]"]).ablation
    (point,) = grid_points(grid_of(cfg))
    overrides = [*cfg.train, *TINY_RUN, *(f"{k}={v}" for k, v in point.items())]
    folder = tmp_path / "out" / "runs" / folder_name(point)
    train(folder, *overrides)
    composed = OmegaConf.to_container(compose("train", overrides), resolve=True)
    (folder / ".hydra").mkdir()
    OmegaConf.save(composed, folder / ".hydra" / "config.yaml")
    return cfg, folder, overrides, composed


def test_a_damaged_or_foreign_run_folder_is_one_line_naming_it(tmp_path):
    cfg, folder, overrides, composed = finished_run_folder(tmp_path)
    keys = {folder.name: config_key(composed)}

    def book(configs=None):
        return Book(cfg, tmp_path / "out", Ledger(tmp_path / "quick.jsonl"), keys, "cpu", configs)

    summary, metrics = folder / "summary.json", folder / "metrics.jsonl"
    whole, history = summary.read_text(), metrics.read_text()
    summary.write_text(whole[: len(whole) // 2])  # truncated
    with pytest.raises(ResultsError, match=rf"^{summary} is damaged \(.*\): delete it, and the ablation rebuilds it"):
        collect(cfg, tmp_path / "out", "cpu", book())
    train(folder, *overrides, "resume=auto")  # as the ablation's next sitting: rewritten from last.pt, not retrained
    assert json.loads(summary.read_text())["final_val_acc1"] == json.loads(whole)["final_val_acc1"]
    assert metrics.read_text() == history

    metrics.write_text(history + '{"epoch": 2, "train_lo')  # a line cut short
    lines = len(history.splitlines()) + 1
    with pytest.raises(ResultsError, match=rf"^{metrics}, line {lines}, is damaged .*: move the run folder away"):
        collect(cfg, tmp_path / "out", "cpu", book())
    metrics.write_text(history)

    other = json.loads(json.dumps(composed))
    other["optim"]["lr"] = 0.5  # trained by hand, with another learning rate
    OmegaConf.save(other, folder / ".hydra" / "config.yaml")
    expected_lr = composed["optim"]["lr"]
    with pytest.raises(
        ResultsError,
        match=rf"^{folder} is not a run of ablation quick: it was trained with optim.lr=0.5 where the "
        rf"ablation has {expected_lr}; move the run folder away, and the ablation trains that run afresh",
    ):
        collect(cfg, tmp_path / "out", "cpu", book({folder.name: composed}))
    assert Ledger(tmp_path / "quick.jsonl").rows == {}  # and no row of it was committed


def test_ablate_py_names_a_damaged_run_file_in_one_line(tmp_path):
    cfg, folder, overrides, composed = finished_run_folder(tmp_path)
    (folder / "summary.json").write_text("{")
    proc = script(
        "ablate.py",
        "ablation.schemes=[none]",
        f"out_dir={tmp_path / 'out'}",
        f"results_dir={tmp_path}",
        *TINY_RUN,
        cwd=tmp_path,
    )
    assert one_error_line(proc).startswith(f"error: {folder / 'summary.json'} is damaged (")


def row_of(study: str, point: dict, key: str, cpu: str, acc: float = 91.5) -> dict:
    row = make_row(study, folder_name(point), point, key, {**SUMMARY, "final_val_acc1": acc}, EVALUATION, HISTORY)
    return {**row, "cpu": cpu}


def test_each_machine_commits_its_own_row_of_a_config(tmp_path):
    Ledger(tmp_path / "fmnist_patch.jsonl").add(row_of("fmnist_patch", {}, "k", "Intel"))
    pooled = Ledger.in_folder(tmp_path, "fmnist_patch_pool")
    pooled.add(row_of("fmnist_patch_pool", {}, "k", "Zen", acc=90.0))
    assert [r["cpu"] for r in pooled.rows_of("k")] == ["Zen", "Intel"]  # this study's own first
    assert pooled.get("k")["cpu"] == "Zen" and pooled.get("k", "Intel")["cpu"] == "Intel"
    assert pooled.get("k", "AVX2") is None
    assert pooled.file_of("k", "Intel") == tmp_path / "fmnist_patch.jsonl" and pooled.file_of("k", "Zen") == pooled.path
    pooled.add(row_of("fmnist_patch_pool", {}, "k", "Zen", acc=90.5))  # the same machine again: replaced
    assert [r["summary"]["final_val_acc1"] for r in read_rows(pooled.path)] == [90.5]


def paired_by_machine():
    """ablation=quick for `none`, two seeds, a class token against average pooling, with
    its pairs kept on one machine: the grid, its points and their keys."""
    plain = OmegaConf.to_container(compose("ablate", ["ablation.schemes=[none]", "ablation.seeds=[0,1]"]).ablation)
    cfg = OmegaConf.create({**plain, "vary": {"model.pool": ["cls", "gap"]}, "same_machine": True})
    points = {folder_name(p): p for p in grid_points(grid_of(cfg))}
    return cfg, points, {name: f"key-of-{name}" for name in points}


def test_a_study_paired_by_machine_trains_what_this_machine_lacks(tmp_path, monkeypatch, capsys):
    cfg, points, keys = paired_by_machine()
    monkeypatch.setattr(results, "machine", lambda: "Zen")
    for name in ("pool-cls_none_seed0", "pool-cls_none_seed1"):  # another study's, from another CPU
        Ledger(tmp_path / "other.jsonl").add(row_of("other", points[name], keys[name], "Intel"))
    ledger = Ledger.in_folder(tmp_path, "quick")
    ledger.add(row_of("quick", points["pool-gap_none_seed0"], keys["pool-gap_none_seed0"], "Zen"))
    started = []
    monkeypatch.setattr(
        ablation, "run_in_parallel", lambda commands, folders, jobs, finished: started.extend(folders) or 0
    )
    assert run_sweep(cfg, tmp_path / "out", [], 1, Book(cfg, tmp_path / "out", ledger, keys)) == 0
    assert [f.name for f in started] == ["pool-cls_none_seed0", "pool-cls_none_seed1", "pool-gap_none_seed1"]
    printed = capsys.readouterr().out
    assert f"1 runs of quick are committed in {tmp_path / 'quick.jsonl'}" in printed
    assert (
        "3 of 4 runs of quick to train\n(a pair's runs share one machine: the pairs whole on none train here, on Zen)"
        in printed
    )

    monkeypatch.setattr(results, "machine", lambda: "Intel")  # there, only Intel's rows count
    started.clear()
    run_sweep(cfg, tmp_path / "out", [], 1, Book(cfg, tmp_path / "out", Ledger.in_folder(tmp_path, "quick"), keys))
    assert [f.name for f in started] == ["pool-gap_none_seed0", "pool-gap_none_seed1"]


def test_a_pair_whole_on_another_machine_stands_and_the_rest_train_here_whole(tmp_path, monkeypatch, capsys):
    # a study that outlives its machine: a new CPU trains only the pairs no machine has whole,
    # both halves of each, and the report pairs each seed within its own machine
    cfg, points, keys = paired_by_machine()
    monkeypatch.setattr(results, "machine", lambda: "Zen 5")
    ledger = Ledger.in_folder(tmp_path, "quick")
    for name, acc in [("pool-cls_none_seed0", 80.0), ("pool-gap_none_seed0", 81.0), ("pool-cls_none_seed1", 82.0)]:
        ledger.add(row_of("quick", points[name], keys[name], "Zen 4", acc))
    started = []
    monkeypatch.setattr(
        ablation, "run_in_parallel", lambda commands, folders, jobs, finished: started.extend(folders) or 0
    )
    assert run_sweep(cfg, tmp_path / "out", [], 1, Book(cfg, tmp_path / "out", ledger, keys)) == 0
    assert [f.name for f in started] == ["pool-cls_none_seed1", "pool-gap_none_seed1"]
    assert "2 runs of quick are committed" in capsys.readouterr().out

    for name, acc in [("pool-cls_none_seed1", 90.0), ("pool-gap_none_seed1", 94.0)]:  # as if trained here
        ledger.add(row_of("quick", points[name], keys[name], "Zen 5", acc))
    book = Book(cfg, tmp_path / "out", ledger, keys)
    runs = collect(cfg, tmp_path / "out", "cpu", book)
    assert [(r.folder.name, r.cpu, r.summary["final_val_acc1"]) for r in runs] == [
        ("pool-cls_none_seed0", "Zen 4", 80.0),
        ("pool-cls_none_seed1", "Zen 5", 90.0),
        ("pool-gap_none_seed0", "Zen 4", 81.0),
        ("pool-gap_none_seed1", "Zen 5", 94.0),
    ]
    (along,) = ablation.varied_differences(runs)
    assert along["n"] == 2 and along["mean"] == pytest.approx((1.0 + 4.0) / 2)
    assert book.machine_note().startswith("Each pair here trained on one machine (")
    assert book.machine_note().endswith("): 2 runs on Zen 4, 2 runs on Zen 5. Left out: 1 runs of Zen 4.")


def test_its_report_shows_the_machine_with_the_most_whole_pairs(tmp_path, monkeypatch):
    cfg, points, keys = paired_by_machine()
    monkeypatch.setattr(results, "machine", lambda: "AVX2")  # a third machine, with no runs of its own
    ledger = Ledger.in_folder(tmp_path, "quick")
    for name, cpu, acc in [
        ("pool-cls_none_seed0", "Intel", 80.0),
        ("pool-cls_none_seed1", "Intel", 81.0),
        ("pool-cls_none_seed0", "Zen", 82.0),
        ("pool-gap_none_seed0", "Zen", 85.0),
    ]:
        ledger.add(row_of("quick", points[name], keys[name], cpu, acc))
    book = Book(cfg, tmp_path / "out", ledger, keys)
    runs = collect(cfg, tmp_path / "out", "cpu", book)  # Zen: one whole pair; Intel: two runs, no pair
    assert [(r.folder.name, r.status, r.cpu) for r in runs] == [
        ("pool-cls_none_seed0", "finished", "Zen"),
        ("pool-cls_none_seed1", "missing", ""),
        ("pool-gap_none_seed0", "finished", "Zen"),
        ("pool-gap_none_seed1", "missing", ""),
    ]
    assert runs[0].summary["final_val_acc1"] == 82.0
    assert book.machine_note().startswith("Every run here trained on one machine, Zen: ")
    assert book.machine_note().endswith("Left out: 2 runs of Intel.")
    (along,) = ablation.varied_differences(runs)
    assert along["n"] == 1 and along["mean"] == pytest.approx(3.0)


def test_a_finished_run_is_committed_for_its_machine_beside_another_machines_row(tmp_path, monkeypatch):
    cfg, folder, overrides, composed = finished_run_folder(tmp_path)
    cfg = OmegaConf.create({**OmegaConf.to_container(cfg), "same_machine": True})
    key = config_key(composed)
    monkeypatch.setattr(results, "machine", lambda: "Zen")
    Ledger(tmp_path / "fmnist_patch.jsonl").add(row_of("fmnist_patch", {}, key, "Intel"))
    book = Book(cfg, tmp_path / "out", Ledger.in_folder(tmp_path, "quick"), {folder.name: key})
    (run,) = collect(cfg, tmp_path / "out", "cpu", book)
    assert run.cpu == "Zen" and run.summary == json.loads((folder / "summary.json").read_text())
    (row,) = read_rows(tmp_path / "quick.jsonl")
    assert (row["cpu"], row["config_key"], row["summary"]["final_val_acc1"]) == (
        "Zen",
        key,
        run.summary["final_val_acc1"],
    )
