"""The decoded cache of class folders: its content, its crops, its rebuilds and its faults."""

import errno
import json
import logging
import math
import os
import signal
import threading

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import Image
from scipy import stats

from data_files import make_fashion_mnist, make_jpeg_folders
from runs import TINY, train
from vit.errors import ConfigError
from vit.studies.class_folders import export_fashion_mnist
from vit.studies.loader_speed import loader_speed
from vit.threads import torch_threads
from vit.training.checkpoint import load_checkpoint
from vit.training.data import DataError, cache_build, cache_format, decoded_cache
from vit.training.data.crop_boxes import DRAWS, flips, image_uniforms, resized_crop_boxes
from vit.training.data.fashion_mnist import FashionMnist
from vit.training.data.imagefolder import ImageFolderData
from vit.training.data.resized_crop import resize_crops, resize_each, resize_to_float

CPU = torch.device("cpu")


def cached_data(root, cache_dir, **kwargs) -> ImageFolderData:
    settings = dict(root=str(root), name="jpegs", img_size=16, in_chans=3, num_classes=None, batch_size=4)
    settings |= dict(mean=[0.5] * 3, std=[0.5] * 3, num_workers=0, cache=True, cache_dir=str(cache_dir)) | kwargs
    return ImageFolderData(**settings)


def cache_of(cache_dir, split="train"):
    (folder,) = [p for p in cache_dir.iterdir() if p.is_dir() and f"-{split}-" in p.name]
    return decoded_cache.read(folder)


def test_the_cache_holds_what_pil_decodes_and_resizes(tmp_path):
    root = make_jpeg_folders(tmp_path / "tree")
    Image.fromarray(np.full((10, 12, 3), 90, np.uint8)).save(root / "train" / "bee" / "small.png")
    data = cached_data(root, tmp_path / "cache", cache_size=20)
    data.loaders(CPU, 0, 1, seed=0)
    train_cache, val_cache = cache_of(tmp_path / "cache"), cache_of(tmp_path / "cache", "val")
    samples = data.folder("train").samples
    assert len(train_cache) == len(samples) == 13 and train_cache.labels.tolist() == [s[1] for s in samples]
    for i, (path, _) in enumerate(samples):
        image = Image.open(path).convert("RGB")
        expected = TF.resize(image, 20) if min(image.size) > 20 else image  # never enlarged
        np.testing.assert_array_equal(train_cache.image(i), np.asarray(expected))
    assert train_cache.image(0).shape == (20, 27, 3)  # 50x37 -> shorter side 20, as Resize(20)
    for i, (path, _) in enumerate(data.folder("val").samples):  # the PIL path's validation transform
        expected = data.val_transform(Image.open(path).convert("RGB")).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(val_cache.image(i), expected)


def test_grey_images_are_cached_with_one_channel(tmp_path):
    root = make_jpeg_folders(tmp_path / "tree")
    data = cached_data(root, tmp_path / "cache", in_chans=1, mean=[0.5], std=[0.5])
    train_batches, val_batches = data.loaders(CPU, 0, 1, seed=0)
    train_batches.set_epoch(0)
    assert next(iter(train_batches))[0].shape == (4, 1, 16, 16) and next(iter(val_batches))[0].shape == (4, 1, 16, 16)
    path = data.folder("train").samples[0][0]
    expected = np.asarray(TF.resize(Image.open(path).convert("L"), 18))[..., None]
    np.testing.assert_array_equal(cache_of(tmp_path / "cache").image(0), expected)


@pytest.mark.parametrize(
    "box, out", [((5, 8, 30, 40), 24), ((0, 0, 37, 50), 16), ((3, 5, 9, 7), 32), ((4, 6, 24, 24), 24)]
)
def test_the_device_crop_equals_torchvisions_resized_crop_for_given_boxes(box, out):
    image = torch.randint(0, 256, (3, 37, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    top, left, h, w = box
    padded = torch.full((2, 40, 52, 3), 255, dtype=torch.uint8)  # outside the box: whatever was there
    padded[:, :h, :w] = image[:, top : top + h, left : left + w].permute(1, 2, 0)
    sizes, mirror = torch.tensor([h, h]), torch.tensor([False, True])
    reference = TF.resized_crop(image.float(), top, left, h, w, [out, out], antialias=True)
    resized = resize_to_float(padded, sizes, torch.tensor([w, w]), out, mirror)
    torch.testing.assert_close(resized[0], reference, rtol=0, atol=1e-3)
    torch.testing.assert_close(resized[1], reference.flip(-1), rtol=0, atol=1e-3)
    as_bytes = resize_crops(padded, sizes, torch.tensor([w, w]), out, mirror)
    assert as_bytes.dtype == torch.uint8 and as_bytes.shape == (2, 3, out, out)
    assert (as_bytes[0].float() - reference.round()).abs().max() <= 1  # a .5 may round either way
    if (h, w) == (out, out):  # no resize: the pixels themselves
        assert torch.equal(as_bytes[0], image[:, top : top + h, left : left + w])
    # on a CPU: torch's kernel per image, to the bit as torchvision's on uint8
    crop = image[:, top : top + h, left : left + w].permute(1, 2, 0)
    each = resize_each([crop, crop], out, [False, True])
    reference_bytes = TF.resized_crop(image, top, left, h, w, [out, out], antialias=True)
    assert torch.equal(each[0], reference_bytes) and torch.equal(each[1], reference_bytes.flip(-1))


@pytest.mark.parametrize("height, width", [(375, 500), (40, 300), (300, 24)])
def test_crop_boxes_follow_torchvisions_distribution(height, width):
    n = 4000
    draws = image_uniforms(seed=0, epoch=0, indices=np.arange(n))
    top, left, h, w = resized_crop_boxes(np.full(n, height), np.full(n, width), draws)
    torch.manual_seed(0)
    image = torch.zeros(1, height, width)
    theirs = np.array([T.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)])
    assert (h > 0).all() and (top + h <= height).all() and (left + w <= width).all()
    ours = {"area": h * w, "aspect": w / h, "top": top / (height - h + 1), "left": left / (width - w + 1)}
    ref = {
        "area": theirs[:, 2] * theirs[:, 3],
        "aspect": theirs[:, 3] / theirs[:, 2],
        "top": theirs[:, 0] / (height - theirs[:, 2] + 1),
        "left": theirs[:, 1] / (width - theirs[:, 3] + 1),
    }
    for name in ours:
        assert stats.ks_2samp(ours[name], ref[name]).pvalue > 1e-3, name
    assert abs(flips(draws).mean() - 0.5) < 0.03


def test_a_box_is_drawn_from_its_image_alone_and_falls_back_as_torchvision_does():
    draws = image_uniforms(seed=3, epoch=1, indices=np.array([7, 8, 9]))
    np.testing.assert_array_equal(image_uniforms(3, 1, np.array([9, 7]))[:, :], draws[[2, 0]])
    assert not np.array_equal(image_uniforms(3, 2, np.array([7])), draws[:1])  # another epoch
    assert draws.shape == (3, DRAWS) and (draws >= 0).all() and (draws < 1).all()
    # a 1000x10 strip fits no box of ratio 3/4..4/3 and 8% of its area: the centre at ratio 3/4
    top, left, h, w = resized_crop_boxes(np.array([1000]), np.array([10]), draws[:1])
    assert (h[0], w[0]) == (round(10 / (3 / 4)), 10) and (top[0], left[0]) == ((1000 - 13) // 2, 0)


def test_batches_depend_on_neither_processes_nor_build_workers_and_restart_exactly(tmp_path):
    root = make_jpeg_folders(tmp_path / "tree", per_class=(10, 3))
    data = cached_data(root, tmp_path / "one", policy="trivialaugment")

    def epoch(data, rank=0, world=1, start=0):
        batches, _ = data.loaders(CPU, rank, world, seed=5)
        batches.set_epoch(2, start)
        return [images for images, _ in batches]

    full = epoch(data)
    assert len(full) == 5 and len({b.float().sum().item() for b in full}) > 1
    assert all(torch.equal(a, b) for a, b in zip(epoch(data, start=3), full[3:], strict=True))
    halves = zip(epoch(data, 0, 2), epoch(data, 1, 2), strict=True)
    assert all(torch.equal(torch.cat(parts), b) for parts, b in zip(halves, full, strict=True))
    built_by_two = epoch(cached_data(root, tmp_path / "two", policy="trivialaugment", num_workers=2))
    assert all(torch.equal(a, b) for a, b in zip(built_by_two, full, strict=True))
    raw = [(tmp_path / d / cache_of(tmp_path / d).folder.name / "pixels.u8").read_bytes() for d in ("one", "two")]
    assert raw[0] == raw[1]


def test_a_changed_folder_or_size_rebuilds_and_says_why(tmp_path, caplog):
    root = make_jpeg_folders(tmp_path / "tree")
    cache = tmp_path / "cache"

    def reopen(**kwargs):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vit"):
            cached_data(root, cache, **kwargs).loaders(CPU, 0, 1, seed=0)
        return [r.getMessage() for r in caplog.records if "decoded cache" in r.getMessage()]

    reopen()
    assert reopen() == []  # up to date: used as it is
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "train" / "ant" / "new.png")
    (message,) = reopen()
    assert message.endswith("the folder changed: 1 files added, 0 removed, 0 modified; rebuilding")
    assert len(cache_of(cache)) == 13
    path = root / "train" / "bee" / "0.jpg"
    Image.fromarray(np.zeros((37, 50, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    (root / "train" / "ant" / "1.jpg").unlink()
    assert reopen()[0].endswith("the folder changed: 0 files added, 1 removed, 1 modified; rebuilding")
    assert cache_of(cache).image(len(cache_of(cache)) - 6).max() == 0  # bee/0.jpg's new pixels
    (message,) = reopen(cache_size=24)
    assert "settings changed: size 18 -> 24" in message and cache_of(cache).image(0).shape[0] == 24
    messages = reopen(cache_size=24, img_size=20)  # the validation images' size
    assert len(messages) == 1 and "size 16 -> 20, resize 18 -> 23" in messages[0]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / "pixels.u8").write_bytes((f / "pixels.u8").read_bytes()[:-10]), "pixels.u8 has"),
        (lambda f: (f / "manifest.json").write_text("{"), "manifest.json"),
        (lambda f: (f / "index.npy").unlink(), "index.npy"),
        (lambda f: flip_byte(f / "pixels.u8", 100), "the pixels of images 0 to"),
    ],
)
def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path, caplog, damage, reason):
    root = make_jpeg_folders(tmp_path / "tree")
    data = cached_data(root, tmp_path / "cache")
    data.loaders(CPU, 0, 1, seed=0)
    whole = cache_of(tmp_path / "cache")
    before = whole.pixels.tobytes()
    damage(whole.folder)
    with caplog.at_level(logging.INFO, logger="vit"):
        data.loaders(CPU, 0, 1, seed=0)
    (message,) = [r.getMessage() for r in caplog.records if "decoded cache" in r.getMessage()]
    assert "damaged" in message and reason in message and message.endswith("rebuilding")
    assert cache_of(tmp_path / "cache").pixels.tobytes() == before


def flip_byte(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_an_unreadable_image_is_one_line_naming_it(tmp_path):
    root = make_jpeg_folders(tmp_path / "tree")
    bad = root / "train" / "bee" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a cut download: the header reads, the pixels do not
    with pytest.raises(DataError, match=r"3\.jpg: not a readable image \(.*\); remove or replace it") as e:
        cached_data(root, tmp_path / "cache").loaders(CPU, 0, 1, seed=0)
    assert len(str(e.value).splitlines()) == 1
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"3\.jpg: not a readable image"):
        cached_data(root, tmp_path / "cache").loaders(CPU, 0, 1, seed=0)


def test_a_full_disk_is_one_line_and_leaves_no_partial_cache(tmp_path, monkeypatch):
    root = make_jpeg_folders(tmp_path / "tree")

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    need = 12 * 18 * 24 * 3 / 1024  # 12 images, shorter side 18 (16 / 0.875), 3 channels
    with pytest.raises(
        DataError, match=rf"^the disk is full: the decoded cache tree-train-\w+ needs {need:.1f} KiB in"
    ) as e:
        cached_data(root, tmp_path / "cache").loaders(CPU, 0, 1, seed=0)
    assert "nothing was left behind" in str(e.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_an_interrupted_build_goes_on_where_it_stopped(tmp_path, monkeypatch):
    root = make_jpeg_folders(tmp_path / "tree", per_class=(10, 2))
    monkeypatch.setattr(cache_format, "CHUNK", 4)
    decode_chunk, decoded = cache_build.decode_chunk, []

    def killed_after_two(task):
        if len(decoded) == 2:
            raise KeyboardInterrupt  # as a kill would, between two chunks
        return count(task)

    def count(task):
        if f"{os.sep}train{os.sep}" in task[1][0][0]:  # the training split's chunks
            decoded.append(task[0])
        return decode_chunk(task)

    monkeypatch.setattr(cache_build, "decode_chunk", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        cached_data(root, tmp_path / "cache").loaders(CPU, 0, 1, seed=0)
    (partial,) = [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".partial")]
    assert np.load(partial / "done.npy").tolist() == [True, True, False, False, False]
    monkeypatch.setattr(cache_build, "decode_chunk", count)
    cached_data(root, tmp_path / "cache").loaders(CPU, 0, 1, seed=0)
    assert decoded == [0, 1, 2, 3, 4] and not partial.exists()  # chunks 0 and 1 not decoded again
    resumed = cache_of(tmp_path / "cache").pixels.tobytes()
    cached_data(root, tmp_path / "fresh").loaders(CPU, 0, 1, seed=0)
    assert cache_of(tmp_path / "fresh").pixels.tobytes() == resumed


def test_ctrl_c_or_sigterm_stop_a_build_in_one_line_even_inside_a_training_run(tmp_path, monkeypatch):
    root = make_jpeg_folders(tmp_path / "tree")
    decode_chunk = cache_build.decode_chunk
    monkeypatch.setattr(
        cache_build, "decode_chunk", lambda task: os.kill(os.getpid(), signal.SIGTERM) or decode_chunk(task)
    )
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a run's handler only notes the signal
    try:
        with pytest.raises(
            DataError, match=r"stopped by signal 15 while building the decoded cache tree-train-\w+: "
        ) as e:
            cached_data(root, tmp_path / "cache").loaders(CPU, 0, 1, seed=0)
        assert "run the same command again to go on" in str(e.value)
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the run's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_options_the_cache_cannot_honour_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="with cache=true, policy must be one of none, trivialaugment"):
        cached_data(tmp_path, tmp_path, policy="randaugment")
    with pytest.raises(ConfigError, match="cache_size 12 is below img_size 16"):
        cached_data(tmp_path, tmp_path, cache_size=12)


def test_a_run_through_the_cache_resumes_to_bit_identical_weights(tmp_path):
    root = make_jpeg_folders(tmp_path / "tree", per_class=(8, 2))
    args = [
        "data=imagefolder",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.cache=true",
        "data.img_size=16",
        "data.batch_size=4",
        "data.policy=trivialaugment",
        "trainer.epochs=2",
        *TINY,
    ]
    full = train(tmp_path / "full", *args)
    resumed = train(tmp_path / "cut", *args, f"resume={tmp_path / 'full' / 'checkpoints' / 'previous.pt'}")
    assert resumed["epochs"] == full["epochs"] == 2
    reference = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    again = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(again[k], v) for k, v in reference.items())
    manifest = json.loads((cache_of(tmp_path / "cache").folder / "manifest.json").read_text())
    assert manifest["bytes"] == 8 * 2 * 18 * math.floor(18 * 50 / 37) * 3


def test_the_loader_benchmark_measures_both_paths_and_the_build(tmp_path):
    root = make_jpeg_folders(tmp_path / "tree", per_class=(8, 2))
    with torch_threads(2):
        report = loader_speed(cached_data(root, tmp_path / "unused"), CPU, seed=0, batches=2, rounds=2)
        assert torch.get_num_threads() == 2  # timed on one thread, then the caller's count put back
    assert [r["loader"] for r in report["rows"]] == [
        "PIL: decode, crop, flip",
        "cache, host: boxes and copies",
        "cache, whole",
    ]
    assert all(len(r["rounds"]) == 2 and r["images_per_sec_per_core"] > 0 for r in report["rows"])
    build = report["build"]
    assert build["images"] == 20 and build["stored_size"] == 18
    stored = 18 * math.floor(18 * 50 / 37) * 3  # bytes of one training image
    assert build["train_mib_per_1000"] > stored * 1000 / 2**20  # the pixels, and the index beside them
    assert not (tmp_path / "unused").exists()  # built in a folder of its own, then removed
    with pytest.raises(DataError, match="data.batch_size 64 is more than the 16 training images"):
        loader_speed(cached_data(root, tmp_path, batch_size=64), CPU, seed=0, batches=2, rounds=1)


def test_fashion_mnist_exported_as_class_folders_holds_its_images_and_labels(tmp_path):
    source = make_fashion_mnist(tmp_path / "idx", train=20, test=10)
    root = export_fashion_mnist(tmp_path / "folders", (12, 10), source=str(source))
    data = cached_data(root, tmp_path / "cache", in_chans=1, mean=[0.5], std=[0.5], img_size=28)
    samples = data.folder("train").samples
    assert len(samples) == 12 and len(data.folder("val").samples) == 10
    settings = dict(name="f", img_size=28, in_chans=1, num_classes=10, batch_size=1, mean=[0], std=[1])
    train_split, _ = FashionMnist(root=str(source), download=False, **settings).splits()
    for path, label in samples:
        i = int(os.path.basename(path).removesuffix(".png"))
        assert data.folder("train").classes[label] == str(int(train_split.labels[i]))
        np.testing.assert_array_equal(np.asarray(Image.open(path)), train_split.images[i, 0].numpy())


def test_a_gpus_batched_crops_match_the_cpus_per_image_ones_whatever_the_threads(tmp_path):
    root = make_jpeg_folders(tmp_path / "tree", per_class=(10, 2))
    train_batches, _ = cached_data(root, tmp_path / "cache", batch_size=8).loaders(CPU, 0, 1, seed=3)
    train_batches.set_epoch(1)
    per_image = [images for images, _ in train_batches]
    train_batches.batched = True  # the GPU's way, here on the CPU
    batched = [images for images, _ in train_batches]
    assert len(per_image) == 2 and all(
        a.shape == b.shape == (8, 3, 16, 16) for a, b in zip(per_image, batched, strict=True)
    )
    assert all((a.int() - b.int()).abs().max() <= 1 for a, b in zip(per_image, batched, strict=True))  # rounding
    rows = np.arange(8)
    one = train_batches.host_crops(rows, train_batches.boxes(rows))
    threaded, _ = cached_data(root, tmp_path / "cache", batch_size=8, num_workers=3).loaders(CPU, 0, 1, seed=3)
    threaded.set_epoch(1)
    three = threaded.host_crops(rows, threaded.boxes(rows))
    boxes = train_batches.boxes(rows)
    for b in rows:  # the padding is never read: compare the boxes
        h, w = boxes.height[b], boxes.width[b]
        assert torch.equal(one[b, :h, :w], three[b, :h, :w])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpus_crops_match_the_cpus(tmp_path):
    root = make_jpeg_folders(tmp_path / "tree", per_class=(10, 2))
    data = cached_data(root, tmp_path / "cache", batch_size=8, num_workers=2)  # the policy draws per device
    on_cpu, _ = data.loaders(CPU, 0, 1, seed=3)
    on_gpu, _ = data.loaders(torch.device("cuda"), 0, 1, seed=3)
    for batches in (on_cpu, on_gpu):
        batches.set_epoch(1)
    for (a, labels_a), (b, labels_b) in zip(on_cpu, on_gpu, strict=True):
        assert b.device.type == "cuda" and torch.equal(labels_a, labels_b.cpu())
        assert a.shape == b.shape and (a.int() - b.cpu().int()).abs().max() <= 1


def test_batches_made_ahead_come_in_order_raise_errors_and_stop_when_left():
    from vit.training.data.prefetch import ahead

    assert list(ahead(range(10))) == list(range(10))

    def broken():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(ahead(broken()))
    made = []

    def counted():
        for i in range(1000):
            made.append(i)
            yield i

    for i in ahead(counted(), depth=2):
        if i == 3:
            break
    assert len(made) < 10  # the thread stopped, a few batches ahead at most


def test_a_cpu_makes_each_batch_between_steps_and_a_gpu_ahead(tmp_path, monkeypatch):
    root = make_jpeg_folders(tmp_path / "tree", per_class=(10, 2))
    batches, _ = cached_data(root, tmp_path / "cache", batch_size=8).loaders(CPU, 0, 1, seed=3)
    batches.set_epoch(1)
    made_in, augmented = [], batches.augmented

    def recorded(rows, step):
        made_in.append(threading.current_thread().name)
        return augmented(rows, step)

    monkeypatch.setattr(batches, "augmented", recorded)
    on_cpu = [images for images, _ in batches]
    assert made_in == [threading.current_thread().name] * 2  # a thread would take a core from the step
    made_in.clear()
    batches.batched = True  # the GPU's way, here on the CPU: the host's copies overlap the GPU's step
    ahead = [images for images, _ in batches]
    assert made_in == ["prefetch"] * 2
    assert all((a.int() - b.int()).abs().max() <= 1 for a, b in zip(on_cpu, ahead, strict=True))
