"""Building a decoded cache: in parallel, resumable, and whole or absent.

The build happens in `<folder>.partial/`: first every image's stored size is read from its
header, and the pixel file is given its full size at once (so a disk too small says so
before any decoding); then the loading processes decode chunks of images into the memory
map. A chunk counts as done once its bytes are flushed to disk and `done.npy` says so, so a
killed build goes on where it stopped when asked for the same cache again. Only a whole
cache is renamed to its folder. A full disk removes the partial folder.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vit.training.data import DataError, cache_format
from vit.training.data.cache_format import CacheSpec, chunk_digest
from vit.training.disk import disk_full

CHANNELS = {"RGB": 3, "L": 1}


def build(folder: Path, wanted: dict, samples: Sequence[tuple[str, int]], spec: CacheSpec, workers: int) -> None:
    partial = folder.with_name(folder.name + ".partial")
    try:
        with signals_stop_the_build():
            index = plan(partial, wanted, samples, spec, workers)
            decode_all(partial, index, samples, spec, workers)
            finish(partial, folder, wanted, index, samples, spec)
    except BuildStopped as e:
        raise DataError(
            f"stopped by signal {e.signum} while building the decoded cache {folder.name}: the images decoded so far "
            f"are kept in {partial}; run the same command again to go on"
        ) from None
    except OSError as e:
        if not disk_full(e, partial.parent):
            raise
        need = planned_bytes(partial, spec)
        shutil.rmtree(partial, ignore_errors=True)
        free = shutil.disk_usage(partial.parent).free
        raise DataError(
            f"the disk is full: the decoded cache {folder.name} needs {size(need)} in {folder.parent}, {size(free)} "
            f"are free; nothing was left behind: free some space or set data.cache_dir"
        ) from None


class BuildStopped(Exception):
    def __init__(self, signum: int):
        self.signum = signum


@contextmanager
def signals_stop_the_build():
    """Ctrl-C or SIGTERM stop a build at once (a training run's handlers would only note them
    and let a long build go on); the handlers found are put back after."""

    def stop(signum, frame):
        raise BuildStopped(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread has handlers
        yield
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def size(nbytes: int) -> str:
    return next(
        f"{nbytes / 2**s:,.1f} {u}" for s, u in ((30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "B")) if nbytes >= 2**s
    )


def plan(partial: Path, wanted: dict, samples, spec: CacheSpec, workers: int) -> np.ndarray:
    """The (offset, height, width) of each image: the partial build's own when it was started
    from the same files and settings, else measured afresh."""
    stamp = partial / "fingerprint.json"
    if stamp.exists() and (partial / "index.npy").exists():
        try:
            if json.loads(stamp.read_text()) == wanted:
                return np.load(partial / "index.npy")
        except ValueError:
            pass
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shapes = np.array(list(run_tasks(measure, [(path, spec) for path, _ in samples], workers, None)), dtype=np.int64)
    sizes = shapes[:, 0] * shapes[:, 1] * CHANNELS[spec.mode]
    index = np.column_stack([np.concatenate([[0], np.cumsum(sizes)[:-1]]), shapes])
    write_atomic(partial / "index.npy", lambda f: np.save(f, index))
    allocate(partial / "pixels.u8", int(sizes.sum()))
    write_atomic(partial / "fingerprint.json", lambda f: f.write(json.dumps(wanted).encode()))  # the plan is whole
    return index


def planned_bytes(partial: Path, spec: CacheSpec) -> int:
    try:
        return total_bytes(np.load(partial / "index.npy"), CHANNELS[spec.mode])
    except (OSError, ValueError, IndexError):
        return 0


def total_bytes(index: np.ndarray, channels: int) -> int:
    return int(index[-1, 0] + index[-1, 1] * index[-1, 2] * channels)


def allocate(path: Path, size: int) -> None:
    """The pixel file at its full size, its blocks reserved: a disk too small fails here."""
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, max(size, 1))
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            if shutil.disk_usage(path.parent).free < size:  # a file system without fallocate
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        f.truncate(size)


def decode_all(partial: Path, index: np.ndarray, samples, spec: CacheSpec, workers: int) -> None:
    done_path = partial / "done.npy"
    chunks = -(-len(samples) // cache_format.CHUNK)
    done = np.load(done_path) if done_path.exists() else np.zeros(chunks, dtype=bool)
    todo = [c for c in range(chunks) if not done[c]]
    tasks = [(c, [(samples[i][0], *index[i]) for i in chunk_range(c, len(samples))], spec) for c in todo]
    name = partial.name.removesuffix(".partial")
    left = sum(len(t[1]) for t in tasks)
    with tqdm(total=len(samples), initial=len(samples) - left, unit="img", desc=f"decoding {name}") as bar:
        for chunk, count in run_tasks(decode_chunk, tasks, workers, partial / "pixels.u8", ordered=False):
            done[chunk] = True
            write_atomic(done_path, lambda f: np.save(f, done))
            bar.update(count)


def chunk_range(chunk: int, count: int) -> range:
    return range(chunk * cache_format.CHUNK, min(count, (chunk + 1) * cache_format.CHUNK))


def finish(partial: Path, folder: Path, wanted: dict, index: np.ndarray, samples, spec: CacheSpec) -> None:
    """Digests, labels and manifest, then the rename that makes the cache whole."""
    channels = CHANNELS[spec.mode]
    total = total_bytes(index, channels)
    pixels = np.memmap(partial / "pixels.u8", dtype=np.uint8, mode="r")
    digests = [chunk_digest(pixels, index, channels, c) for c in range(-(-len(samples) // cache_format.CHUNK))]
    del pixels
    labels = np.array([label for _, label in samples], dtype=np.int64)
    write_atomic(partial / "labels.npy", lambda f: np.save(f, labels))
    manifest = {"fingerprint": wanted, "channels": channels, "bytes": total, "chunk_digests": digests}
    write_atomic(partial / "manifest.json", lambda f: f.write(json.dumps(manifest).encode()))
    for name in ("done.npy", "fingerprint.json"):
        (partial / name).unlink()
    stale = folder.with_name(folder.name + ".stale")
    shutil.rmtree(stale, ignore_errors=True)
    if folder.exists():
        os.replace(folder, stale)
    os.replace(partial, folder)
    shutil.rmtree(stale, ignore_errors=True)


def write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- what the loading processes run -----------------------------------------------------------


def run_tasks(function, tasks: list, workers: int, pixels: Path | None, ordered: bool = True):
    """function(task) for every task, in `workers` processes (0: here), each with the pixel file
    mapped once. A task that reports an unreadable image stops the build in one line."""
    if workers == 0 or len(tasks) <= 1:
        open_pixels(pixels)
        try:
            yield from checked(map(function, tasks))
        finally:
            open_pixels(None)
        return
    # forkserver: fresh processes (a fork of a threaded training process can deadlock), which
    # import no torch, so they start in a fraction of a second; a process that dies is an
    # error here (BrokenProcessPool), never a pool that waits for it forever
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(min(workers, len(tasks)), context, initializer=start_worker, initargs=(pixels,))
    try:
        if ordered:
            yield from checked(pool.map(function, tasks, chunksize=64))
        else:
            yield from checked(f.result() for f in as_completed([pool.submit(function, t) for t in tasks]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # the chunks under way end; no new ones start


def checked(results):
    for result in results:
        if isinstance(result, BadImage):
            raise DataError(f"{result.path}: not a readable image ({result.reason}); remove or replace it")
        yield result


class BadImage:
    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason


_pixels: np.memmap | None = None


def start_worker(pixels: Path | None) -> None:
    """A loading process: Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    open_pixels(pixels)


def open_pixels(path: Path | None) -> None:
    global _pixels
    _pixels = np.memmap(path, dtype=np.uint8, mode="r+") if path is not None else None


def measure(task) -> tuple[int, int] | BadImage:
    """(height, width) the image will be stored at, from its header."""
    path, spec = task
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return BadImage(path, str(e) or type(e).__name__)
    if spec.split == "val":
        return spec.size, spec.size
    return stored_shape(height, width, spec.size)


def stored_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """A training image's stored shape: resized when its shorter side exceeds size, else as it is."""
    return resized_shape(height, width, size) if min(height, width) > size else (height, width)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    short, long = min(height, width), max(height, width)
    long = int(size * long / short)
    return (size, long) if height <= width else (long, size)


def decode_chunk(task) -> tuple[int, int] | BadImage:
    """Decode a chunk's images into the memory map and flush it to disk."""
    chunk, images, spec = task
    for path, offset, height, width in images:
        try:
            pixels = decode(path, spec)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            return BadImage(path, str(e) or type(e).__name__)
        if pixels.shape[:2] != (height, width):
            return BadImage(path, f"decoded {pixels.shape[:2]}, its header said {(height, width)}")
        _pixels[offset : offset + pixels.size] = pixels.reshape(-1)
    _pixels.flush()
    return chunk, len(images)


def decode(path: str, spec: CacheSpec) -> np.ndarray:
    """(height, width, channels) uint8: the image as the PIL loader decodes and resizes it
    (torchvision's Resize and CenterCrop on a PIL image, written in PIL: no torch here)."""
    with open(path, "rb") as f, Image.open(f) as image:
        image = image.convert(spec.mode)
    if spec.split == "val":
        image = pil_resize(image, spec.resize)
        left, top = round((image.width - spec.size) / 2), round((image.height - spec.size) / 2)
        image = image.crop((left, top, left + spec.size, top + spec.size))
    elif min(image.size) > spec.size:
        image = pil_resize(image, spec.size)
    return np.asarray(image).reshape(image.height, image.width, CHANNELS[spec.mode])


def pil_resize(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, the longer one in proportion, rounded down: torchvision's Resize."""
    height, width = resized_shape(image.height, image.width, size)
    return image.resize((width, height), Image.Resampling.BILINEAR)
