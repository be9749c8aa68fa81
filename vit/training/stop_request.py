"""A signal to a training process: save at the next step and stop, rather than die."""

import signal


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
        if signum == signal.SIGINT:  # a second Ctrl-C is a person insisting; a second SIGTERM
            signal.signal(signum, signal.SIG_DFL)  # (a scheduler, a dying parent) waits for the save

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
