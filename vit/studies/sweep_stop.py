"""SIGTERM or Ctrl-C to a sweep that trains runs in processes of its own: each run is told to
save and stop (it saves last.pt at its next step), no further run starts, and the sweep
says so in one line. A second Ctrl-C kills at once."""

from __future__ import annotations

import signal
import subprocess
import threading

from vit.training.stop_request import StopRequest


class SweepStop(StopRequest):
    """A training process's stop request, passed on to the runs it started: held by the main
    thread for as long as the sweep trains (`with SweepStop() as stop`); the threads that
    start runs ask `start` for each process instead of starting it themselves."""

    def __init__(self):
        self.running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()  # taken by the threads that start runs, never by the handler
        super().__init__()

    def __enter__(self) -> SweepStop:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def handle(self, signum, frame) -> None:
        super().handle(signum, frame)
        for process in list(self.running):  # Ctrl-C reached them from the terminal; SIGTERM did not
            process.send_signal(signal.SIGTERM)

    def start(self, command: list[str], **popen) -> subprocess.Popen | None:
        """The run's process, or None once the sweep is stopping."""
        with self._lock:
            if self.signum:
                return None
            process = subprocess.Popen(command, **popen)
            self.running.add(process)
        if self.signum:  # the signal came while it started: it was not among those told
            process.send_signal(signal.SIGTERM)
        return process

    def wait(self, process: subprocess.Popen) -> int:
        code = process.wait()
        self.running.discard(process)
        return code
