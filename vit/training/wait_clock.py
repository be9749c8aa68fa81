"""How long the training step waits for its batches."""

from __future__ import annotations

import time

import torch


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
