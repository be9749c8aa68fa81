"""Make the next batches in a thread while the training step runs on this one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def ahead(items: Iterable, depth: int = 2) -> Iterator:
    """The items of `items`, in order, made up to `depth` ahead by a thread. An error in the
    thread is raised here; leaving the loop early stops the thread."""
    made: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        made.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            made.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            made.put(_Raised(e))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while (item := made.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
