"""What class folders cost to load, per core: the PIL path against the decoded cache.

Rows, each the training loader alone (no model), in one process with one thread, medians of
interleaved rounds:
- PIL: decode, RandomResizedCrop, flip and conversion to uint8, as one DataLoader worker
  does them (here in the training process: num_workers=0);
- cache, host: each image's box drawn and copied out of the memory map into a batch, which
  is all the host does for the cache (on a GPU the rest runs there);
- cache, whole: the same plus the batched resize and flip on the training device.
And the cache's build: seconds and bytes per 1,000 images, with the build's processes.
"""

from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vit.threads import torch_threads
from vit.training.data import DataError
from vit.training.data.imagefolder import ImageFolderData


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def build_cache(data: ImageFolderData, device: torch.device, seed: int, where: Path) -> tuple:
    """The cached loaders, built afresh in `where`, and the build's figures."""
    cached = copy.copy(data)
    cached.cache, cached.cache_dir = True, where
    start = time.perf_counter()
    train, val = cached.loaders(device, 0, 1, seed)
    seconds = time.perf_counter() - start
    images = train.num_samples + val.num_samples
    build = {
        "images": images,
        "workers": data.num_workers,
        "seconds": seconds,
        "seconds_per_1000": 1000 * seconds / images,
        "train_mib_per_1000": folder_bytes(train.split.folder) / 2**20 * 1000 / train.num_samples,
        "val_mib_per_1000": folder_bytes(val.split.folder) / 2**20 * 1000 / val.num_samples,
        "stored_size": data.cache_size,
    }
    return train, build


def timed(batches, limit: int, device: torch.device) -> float:
    """Images/s of the first `limit` batches of (images, labels), or of the host's (crops, sizes)."""
    start, images = time.perf_counter(), 0
    for k, batch in enumerate(batches):
        images += len(batch[0])  # images, or the host's crops
        if k + 1 == limit:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def host_part(cached, epoch: int):
    """The cache's host work alone, batch by batch: (crops, sizes)."""
    cached.set_epoch(epoch)
    for index in cached.sampler:
        rows = index.numpy()
        yield cached.host_crops(rows, cached.boxes(rows)), None


def loader_speed(data: ImageFolderData, device: torch.device, seed: int, batches: int, rounds: int) -> dict:
    with torch_threads(1):  # per core
        return per_core_speeds(data, device, seed, batches, rounds)


def per_core_speeds(data: ImageFolderData, device: torch.device, seed: int, batches: int, rounds: int) -> dict:
    pil = copy.copy(data)
    pil.cache, pil.num_workers = False, 0
    pil_train, _ = pil.loaders(device, 0, 1, seed)
    if len(pil_train) == 0:
        raise DataError(f"data.batch_size {data.batch_size} is more than the {pil_train.num_samples} training images")
    where = Path(tempfile.mkdtemp(prefix="loader-speed-"))
    try:
        cached, build = build_cache(data, device, seed, where)
        rates = {"PIL: decode, crop, flip": [], "cache, host: boxes and copies": [], "cache, whole": []}
        for epoch in range(rounds):
            pil_train.set_epoch(epoch)
            rates["PIL: decode, crop, flip"].append(timed(pil_train, batches, device))
            rates["cache, host: boxes and copies"].append(timed(host_part(cached, epoch), batches, device))
            cached.set_epoch(epoch)
            rates["cache, whole"].append(timed(cached, batches, device))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    rows = [{"loader": name, "images_per_sec_per_core": statistics.median(r), "rounds": r} for name, r in rates.items()]
    return {"rows": rows, "build": build}


def markdown(report: dict, device: str) -> str:
    base = report["rows"][0]["images_per_sec_per_core"]
    lines = [f"| loader, one core ({device}) | images/s | vs PIL |", "| --- | --- | --- |"]
    for row in report["rows"]:
        ips = row["images_per_sec_per_core"]
        lines.append(f"| {row['loader']} | {ips:,.0f} | {ips / base:.1f}x |")
    b = report["build"]
    lines.append(
        f"\nbuild: {b['images']:,} images in {b['seconds']:.1f} s with {b['workers']} processes "
        f"({b['seconds_per_1000']:.1f} s per 1,000 images); on disk per 1,000 images: "
        f"{b['train_mib_per_1000']:.1f} MiB training (shorter side {b['stored_size']}), "
        f"{b['val_mib_per_1000']:.1f} MiB validation"
    )
    return "\n".join(lines)
