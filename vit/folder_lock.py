"""One command at a time in a run or ablation folder.

A second `train.py` or `ablate.py` pointed at a folder that a live process is using would
interleave checkpoints, logs and rows with it; it refuses instead, naming that process.

The lock is the kernel's (flock on `FOLDER/.in_use`), so it ends with its process however
that ends: a `kill -9` leaves no lock to obey for ever. The file also names its holder, for
the refusal's message; a holder's name left in a file whose lock is free is what a killed
process left, and is taken over with a line that says so. The file is emptied, not deleted,
on the way out (deleting a flock'd file lets two processes lock two files of one name).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from vit.errors import TrainingError

try:
    import fcntl
except ImportError:  # Windows: no flock, no lock
    fcntl = None

LOCK_NAME = ".in_use"
log = logging.getLogger("vit")


class FolderInUse(TrainingError):
    """Another live process holds the folder: one line, exit code 1, and nothing written there."""


def holder_line(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (
        f"process {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('command', '?')}, since {since})"
    )


def read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        holder = {"command": "unreadable"}
    return holder if isinstance(holder, dict) else {"command": "unreadable"}


def in_use(folder: Path, what: str) -> str | None:
    """Why `folder` may not be used now (a live process holds it), or None; holds nothing.
    For a check before anything is written there (Hydra writes its files before the job)."""
    if fcntl is None or not (folder / LOCK_NAME).exists():
        return None
    fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return refusal(folder, what, read_holder(fd))
    finally:
        os.close(fd)


def refusal(folder: Path, what: str, holder: dict) -> str:
    advice = "wait for it to end, or stop it, or choose another folder"
    return f"the {what} {folder} is in use by {holder_line(holder)}: {advice}"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder` (created if missing) for this process while inside; raise FolderInUse
    when a live process holds it. `what` names the folder in messages ("run folder")."""
    if fcntl is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(refusal(folder, what, read_holder(fd))) from None
        left = read_holder(fd)
        if left:
            log.warning(
                "taking over the %s %s from %s, which ended without letting go", what, folder, holder_line(left)
            )
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "python"
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean end leaves an empty file: nothing to take over
    finally:
        os.close(fd)  # and with it the lock
