"""One command per run or ablation folder: a second one refuses in one line naming the first,
and a lock left by a killed process is taken over."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from runs import one_error_line, script, train_command
from vit.folder_lock import LOCK_NAME, FolderInUse, folder_lock

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from vit.folder_lock import folder_lock
    with folder_lock(Path(sys.argv[1]), "run folder"):
        print("holding", flush=True)
        time.sleep(120)
    """
)


def holder(folder) -> subprocess.Popen:
    """Another process holding `folder`, once it has said so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_live_holder_is_named_and_a_killed_one_is_taken_over(tmp_path, caplog):
    proc = holder(tmp_path)
    try:
        with pytest.raises(FolderInUse, match=rf"^the run folder {tmp_path} is in use by process {proc.pid} on "):
            with folder_lock(tmp_path, "run folder"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid  # what kill -9 left
    with folder_lock(tmp_path, "run folder"):  # not obeyed for ever: the kernel let go with the process
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != proc.pid
    assert f"from process {proc.pid} on" in caplog.text and "ended without letting go" in caplog.text
    assert (tmp_path / LOCK_NAME).read_text() == ""  # a clean end leaves nothing to take over
    with folder_lock(tmp_path, "run folder"):
        pass
    assert "taking over" not in caplog.text.split("ended without letting go", 1)[1]


def test_a_second_train_py_in_a_folder_in_use_refuses_and_writes_nothing_there(tmp_path):
    run = tmp_path / "run"
    proc = holder(run)
    try:
        refused = subprocess.run(
            train_command(run, "experiment=digits", "trainer.epochs=1"), cwd=tmp_path, capture_output=True, text=True
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    line = one_error_line(refused)
    assert line.startswith(f"error: the run folder {run} is in use by process {proc.pid} on ")
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # no error.txt, no log, no checkpoint


def test_a_second_ablate_py_on_the_same_ablation_refuses(tmp_path):
    out = tmp_path / "outputs" / "ablations" / "quick"
    proc = holder(out)
    try:
        refused = script("ablate.py", "ablation=quick", cwd=tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert one_error_line(refused).startswith(f"error: the ablation folder {out} is in use by process {proc.pid}")
