"""The data path: batches, device augmentation, the probe, digits and CIFAR's real parser."""

import gzip
import itertools
import math
import os

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from omegaconf import OmegaConf
from torch.overrides import TorchFunctionMode

from conftest import DEVICES
from data_files import make_cifar10_archive, make_class_folders, make_fashion_mnist
from vit.errors import ConfigError
from vit.registry import CONFIGS
from vit.training.data import DataError, fashion_mnist
from vit.training.data.augment import batch_generator, normalize, random_crop_flip
from vit.training.data.batches import ShardedBatches, epoch_order
from vit.training.data.cifar import Cifar
from vit.training.data.digits import Digits
from vit.training.data.fashion_mnist import FashionMnist
from vit.training.data.imagefolder import ImageFolderData, workers
from vit.training.data.probe import PLUS, SQUARE, PositionProbe
from vit.training.data.trivial_augment import BINS, OPERATIONS, draw, trivial_augment
from vit.training.seeds import PURPOSES, seed_for

GREY = dict(in_chans=1, mean=[0.5], std=[0.5])


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_together_see_the_global_batches_of_one_process(world):
    order = epoch_order(100, seed=3, epoch=2)
    ranks = [ShardedBatches(100, 16, r, world, seed=3) for r in range(world)]
    for r in ranks:
        r.set_epoch(2)
    steps = list(zip(*ranks, strict=True))
    assert len(steps) == 100 // 16
    for t, parts in enumerate(steps):
        assert torch.equal(torch.cat(parts), order[t * 16 : (t + 1) * 16])


def test_an_epoch_restarts_at_a_batch_and_epochs_differ():
    full = ShardedBatches(50, 5, 0, 1, seed=0)
    full.set_epoch(1)
    later = ShardedBatches(50, 5, 0, 1, seed=0)
    later.set_epoch(1, start=4)
    assert [b.tolist() for b in later] == [b.tolist() for b in list(full)[4:]]
    assert not torch.equal(epoch_order(50, 0, 1), epoch_order(50, 0, 2))


def test_evaluation_shards_cover_every_sample_once():
    shards = [torch.cat(list(ShardedBatches(103, 9, r, 3, seed=0, train=False))) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(103))


def test_normalize_scales_and_standardises_per_channel_and_leaves_its_input_alone():
    images = torch.tensor([[0, 51], [255, 51]], dtype=torch.uint8).expand(2, 3, 2, 2).contiguous()
    mean, std = torch.tensor([0.2, 0.5, 1.0]), torch.tensor([0.5, 0.25, 2.0])
    out = normalize(images, mean, std)
    expected = (images.float() / 255 - mean[:, None, None]) / std[:, None, None]
    assert out.dtype == torch.float32 and torch.equal(out, expected)  # the formula, to the bit
    assert torch.allclose(out[0, :, 1, 0], (1.0 - mean) / std)  # 255: 1 after scaling, per channel
    floats = images.float()
    normalize(floats, mean, std)  # it works on a copy: a float batch is not changed under its caller
    assert torch.equal(floats, images.float())


def test_batches_are_cut_on_the_device_they_will_be_used_on():
    # "meta" stands in for a GPU here: the index must already live there, not be copied per step
    train = ShardedBatches(40, 8, 0, 1, seed=0, device="meta")
    val = ShardedBatches(40, 8, 0, 1, seed=0, train=False, device="meta")
    assert {b.device.type for b in train} == {b.device.type for b in val} == {"meta"}
    assert [b.shape for b in train] == [torch.Size([8])] * 5


@pytest.mark.parametrize("device", DEVICES)
def test_device_crop_and_flip_are_per_sample_and_rank_independent(device):
    device = torch.device(device)
    images = torch.arange(6 * 2 * 5 * 5, dtype=torch.float32).reshape(6, 2, 5, 5).to(torch.uint8).to(device)
    whole = random_crop_flip(images, 2, True, batch_generator(device, 0, 1, 7), 6, 0)
    halves = [
        random_crop_flip(images[i * 3 : i * 3 + 3], 2, True, batch_generator(device, 0, 1, 7), 6, i * 3)
        for i in range(2)
    ]
    assert torch.equal(torch.cat(halves), whole)
    assert whole.shape == images.shape and whole.dtype == torch.uint8
    for out, src in zip(
        whole, images, strict=True
    ):  # each output is a shifted (and maybe mirrored) window of its own input
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        windows = [padded[:, i : i + 5, j : j + 5] for i in range(5) for j in range(5)]
        assert any(torch.equal(out, w) or torch.equal(out, w.flip(-1)) for w in windows)
    assert len({tuple(o.flatten().tolist()) for o in whole}) > 1


def streams(device, step):
    """A batch's two streams (seed 0, epoch 1): the device draws and the host magnitudes."""
    return batch_generator(device, 0, 1, step), torch.Generator().manual_seed(seed_for("policy", 0, 1, step))


@pytest.mark.parametrize("device", DEVICES)
def test_trivial_augment_gives_each_image_its_own_operation_and_is_rank_independent(device):
    device = torch.device(device)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8).to(device)
    choice, negate, magnitudes = draw(*streams(device, 3), 64, 0, 64)
    out = trivial_augment(images, choice, negate, magnitudes)
    assert out.shape == images.shape and out.dtype == torch.uint8
    names = list(OPERATIONS)
    for i in range(64):  # image i went through its own operation, at the batch's magnitude and its own sign
        name = names[int(choice[i])]
        m = -magnitudes[name] if OPERATIONS[name][1] and negate[i] else magnitudes[name]
        assert torch.equal(out[i : i + 1], OPERATIONS[name][2](images[i : i + 1], m)), name
    assert len(set(choice.tolist())) >= 10 and 0 < int(negate.sum()) < 64
    halves = []
    for offset in (0, 32):  # two ranks with 32 images each draw what one process with 64 does
        local = draw(*streams(device, 3), 64, offset, 32)
        halves.append(trivial_augment(images[offset : offset + 32], *local))
    assert torch.equal(torch.cat(halves), out)
    other = trivial_augment(images, *draw(*streams(device, 4), 64, 0, 64))
    assert not torch.equal(other, out)  # another step, other draws


# TrivialAugment's "wide" space (Müller & Hutter 2021, as torchvision's TrivialAugmentWide):
# each operation's magnitude from its first to its last bin, and whether its sign is drawn
WIDE = {
    "identity": None,
    "autocontrast": None,
    "equalize": None,
    "shear_x": (0.0, 0.99, True),
    "shear_y": (0.0, 0.99, True),
    "translate_x": (0.0, 32.0, True),
    "translate_y": (0.0, 32.0, True),
    "rotate": (0.0, 135.0, True),
    "brightness": (0.0, 0.99, True),
    "color": (0.0, 0.99, True),
    "contrast": (0.0, 0.99, True),
    "sharpness": (0.0, 0.99, True),
    "posterize": (8.0, 2.0, False),  # bits kept, rounded to whole bits
    "solarize": (255.0, 0.0, False),  # threshold on uint8
}


def test_trivial_augment_magnitudes_are_the_wide_space():
    assert BINS == 31 and set(OPERATIONS) == set(WIDE)
    for name, (magnitude, signed, _) in OPERATIONS.items():
        ours = torch.tensor([float(magnitude(b)) for b in range(BINS)], dtype=torch.float64)
        if WIDE[name] is None:
            assert not signed and not ours.any(), name
            continue
        low, high, wide_signed = WIDE[name]
        expected = torch.linspace(low, high, BINS, dtype=torch.float64)
        if name == "posterize":
            expected = expected.round()
        assert signed == wide_signed, name
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-9, msg=name)


# the operations that torchvision runs from a matrix or kernel it makes on the image's device
# per call; ours make them once and must give torchvision's pixels
TORCHVISION = {
    "shear_x": lambda x, m: TF.affine(x, 0.0, [0, 0], 1.0, [math.degrees(math.atan(m)), 0.0], center=[0, 0]),
    "shear_y": lambda x, m: TF.affine(x, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(m))], center=[0, 0]),
    "translate_x": lambda x, m: TF.affine(x, 0.0, [int(m), 0], 1.0, [0.0, 0.0]),
    "translate_y": lambda x, m: TF.affine(x, 0.0, [0, int(m)], 1.0, [0.0, 0.0]),
    "rotate": lambda x, m: TF.rotate(x, m),
    "sharpness": lambda x, m: TF.adjust_sharpness(x, 1 + m),
}


@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (4, 1, 28, 28), (4, 3, 20, 24)])
def test_trivial_augment_geometry_and_sharpness_are_torchvisions_to_the_pixel(shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    for name, reference in TORCHVISION.items():
        magnitude, signed, operation = OPERATIONS[name]
        for m in {s * magnitude(b) for b in range(BINS) for s in (1, -1)}:  # every bin, both signs
            assert torch.equal(operation(images, m), reference(images, m)), (name, m)


class HostData(TorchFunctionMode):
    """Records what would make the host wait for a GPU: a tensor built from host data for
    the device, a host tensor copied to it, a value read back."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.cpu}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device") or next((a for a in args[1:] if isinstance(a, (str, torch.device))), None)
        if func in (torch.tensor, torch.as_tensor) and device is not None and torch.device(device).type != "cpu":
            self.seen.append(func.__name__)
        if func is torch.Tensor.to and args[0].device.type == "cpu" and device is not None:
            self.seen.append("to")
        if func in self.READS:
            self.seen.append(func.__name__)
        return func(*args, **kwargs)


def test_trivial_augment_sends_no_host_data_per_batch():
    # the meta device stands in for a GPU: the same calls, no data
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8, device="meta")
    choice = torch.arange(64, device="meta") % len(OPERATIONS)
    negate = torch.zeros(64, dtype=torch.bool, device="meta")
    host = torch.Generator().manual_seed(0)
    trivial_augment(images, choice, negate, draw(torch.Generator(), host, 64, 0, 64)[2])  # first batch: set-up
    for _ in range(3):
        magnitudes = draw(torch.Generator(), host, 64, 0, 64)[2]
        with HostData() as spy:
            trivial_augment(images, choice, negate, magnitudes)
        assert spy.seen == []


def test_class_folder_batches_do_not_depend_on_workers_and_restart_exactly(tmp_path):
    # each image is augmented from its own (seed, epoch, index) stream, so a resumed epoch
    # sees the same pixels whichever worker now loads which batch
    root = make_class_folders(tmp_path / "tree")
    data = ImageFolderData(
        root=str(root),
        name="folders",
        img_size=16,
        in_chans=3,
        num_classes=3,
        batch_size=4,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        policy="trivialaugment",
        num_workers=2,
    )

    def epoch(workers, start=0):
        data.num_workers = workers
        train, _ = data.loaders(torch.device("cpu"), 0, 1, seed=5)
        train.set_epoch(2, start)
        return [images for images, _ in train]

    full = epoch(2)
    assert len(full) == 9 and len({b.sum().item() for b in full}) > 1
    assert all(torch.equal(a, b) for a, b in zip(epoch(0, start=3), full[3:], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(epoch(1, start=4), full[4:], strict=True))
    torch.manual_seed(0)  # and the loader leaves the training loop's random stream alone
    epoch(0)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


def test_probe_labels_follow_the_shapes_and_each_shape_fills_one_patch():
    probe = PositionProbe(name="probe", img_size=16, num_classes=4, batch_size=8, cell=4, **GREY)
    split = probe.generate(200, seed=5)
    assert split.images.shape == (200, 1, 16, 16) and split.labels.bincount(minlength=4).min() > 30
    for image, label in zip(split.images[:, 0], split.labels, strict=True):
        bright = (image >= 160).nonzero()
        cells = {(int(r) // 4, int(c) // 4) for r, c in bright}
        assert len(cells) == 2  # two shapes, each inside one 4x4 cell
        (ra, ca), (rb, cb) = sorted(cells)
        assert ra != rb and ca != cb
        # find which cell holds the plus (5 pixels) and which the square (9)
        count = {cell: sum((int(r) // 4, int(c) // 4) == cell for r, c in bright) for cell in cells}
        plus = next(c for c, n in count.items() if n == len(PLUS))
        square = next(c for c, n in count.items() if n == len(SQUARE))
        assert int(label) == 2 * (plus[1] > square[1]) + (plus[0] > square[0])


def test_probe_is_the_same_every_time_and_refuses_bad_cells():
    make = lambda **kw: PositionProbe(name="probe", img_size=16, num_classes=4, batch_size=8, **GREY, **kw)  # noqa: E731
    assert torch.equal(make().generate(10, 1).images, make().generate(10, 1).images)
    with pytest.raises(ValueError, match="cells"):
        make(cell=5)


def test_digits_split_is_stratified_and_fixed():
    digits = Digits(name="digits", img_size=16, num_classes=10, batch_size=8, **GREY)
    train, val = digits.splits()
    assert len(train.labels) + len(val.labels) == 1797 and len(val.labels) == 359
    assert val.labels.bincount().tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    assert train.images.shape[1:] == (1, 16, 16) and train.images.dtype == torch.uint8
    assert torch.equal(digits.splits()[1].labels, val.labels)


def test_cifar_reads_the_archive_and_reports_what_is_missing(tmp_path):
    make_cifar10_archive(tmp_path)
    cifar = Cifar(
        name="cifar10",
        root=str(tmp_path),
        download=False,
        verify_checksums=False,
        img_size=32,
        in_chans=3,
        num_classes=10,
        batch_size=8,
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )
    train, val = cifar.splits()
    assert train.images.shape == (80, 3, 32, 32) and val.images.shape == (16, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.max() < 10
    empty = Cifar(
        name="cifar10",
        root=str(tmp_path / "none"),
        download=False,
        img_size=32,
        in_chans=3,
        num_classes=10,
        batch_size=8,
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )
    with pytest.raises(DataError, match="put cifar-10-python.tar.gz"):
        empty.splits()


def test_every_random_stream_has_its_own_seed():
    # with seeds made by adding offsets, one purpose's stream at step t was another's at t + 1,
    # and the epoch order's was step 0's: every (purpose, seed, counters) must get its own
    seeds = {}
    for purpose in PURPOSES:
        for run_seed, epoch, step in itertools.product(range(3), range(4), range(5)):
            seeds[purpose, run_seed, epoch, step] = seed_for(purpose, run_seed, epoch, step)
        for run_seed, epoch in itertools.product(range(3), range(4)):
            seeds[purpose, run_seed, epoch] = seed_for(purpose, run_seed, epoch)
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert seed_for("batch", 0, 1, 3) == seed_for("batch", 0, 1, 3)  # a pure function: resumes replay it


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_the_four_idx_files(tmp_path, gz):
    root = make_fashion_mnist(tmp_path / "fmnist", train=64, test=32, gz=gz)
    cfg = OmegaConf.load(CONFIGS / "data" / "fashion_mnist.yaml")
    data = FashionMnist(**data_kwargs(cfg, root))
    train, test = data.splits()
    assert train.images.shape == (64, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (32, 1, 28, 28) and torch.equal(test.labels, torch.arange(32) % 10)
    raw = (
        gzip.open(root / "train-images-idx3-ubyte.gz").read() if gz else (root / "train-images-idx3-ubyte").read_bytes()
    )
    assert torch.equal(train.images[3, 0].flatten(), torch.tensor(list(raw[16 + 3 * 784 : 16 + 4 * 784])))

    subset = FashionMnist(**{**data_kwargs(cfg, root), "train_subset": 20}).splits()[0]
    assert len(subset.labels) == 20 and len(set(subset.labels.tolist())) > 1  # a shuffled subset, not the first 20
    assert torch.equal(subset.labels, FashionMnist(**{**data_kwargs(cfg, root), "train_subset": 20}).splits()[0].labels)
    wider = FashionMnist(**{**data_kwargs(cfg, root), "img_size": 32}).splits()[0]
    assert wider.images.shape == (64, 1, 32, 32)


def data_kwargs(cfg, root):
    return {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"} | {
        "root": str(root),
        "download": False,
    }


def test_fashion_mnist_missing_or_damaged_files_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN", tmp_path / "not-installed")  # as on a machine without the package
    cfg = OmegaConf.load(CONFIGS / "data" / "fashion_mnist.yaml")
    with pytest.raises(DataError, match="put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k") as e:
        FashionMnist(**data_kwargs(cfg, tmp_path / "empty")).splits()
    assert "dataset-fashion-mnist" in str(e.value) and len(str(e.value).splitlines()) == 1
    root = make_fashion_mnist(tmp_path / "cut", gz=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated"):
        FashionMnist(**data_kwargs(cfg, root)).splits()


def folders_data(root, **kwargs) -> ImageFolderData:
    settings = dict(root=str(root), name="folders", img_size=16, in_chans=3, num_classes=None, batch_size=4)
    settings |= dict(mean=[0.5] * 3, std=[0.5] * 3, num_workers=0) | kwargs
    return ImageFolderData(**settings)


def test_class_folders_count_their_classes(tmp_path):
    root = make_class_folders(tmp_path / "tree", classes=("ant", "bee", "cat", "dog"))
    assert folders_data(root).class_count() == 4
    assert folders_data(root, classes=2).class_count() == 2
    assert folders_data(root, classes=["dog", "bee"]).class_count() == 2
    with pytest.raises(DataError, match="no class folder"):
        folders_data(root, classes=["emu"]).class_count()
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders under"):
        folders_data(tmp_path / "empty").class_count()


def test_grey_class_folders_load_one_channel(tmp_path):
    root = make_class_folders(tmp_path / "tree")
    data = folders_data(root, in_chans=1, mean=[0.5], std=[0.5], num_classes=3)
    train, val = data.loaders(torch.device("cpu"), 0, 1, seed=0)
    images, labels = next(iter(train))
    assert images.shape == (4, 1, 16, 16) and images.dtype == torch.uint8
    assert next(iter(val))[0].shape[1] == 1


def test_loading_processes_default_to_the_usable_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert workers("auto") == 2 and workers(0) == 0 and workers(5) == 5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert workers("auto") == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # torchrun, 16 processes on this machine: 4 cores each
    assert workers("auto") == 4 and workers(5) == 5
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "128")
    assert workers("auto") == 1
    with pytest.raises(ConfigError, match="num_workers must be auto or a whole number"):
        workers(-1)
