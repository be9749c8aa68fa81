import itertools
import os

# under pytest-xdist the workers share the cores, and so do the scripts they start (which
# inherit this): set before torch is imported, which reads it once
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402
import torch  # noqa: E402

from vit import VisionTransformer, registry  # noqa: E402

# every test list of components comes from the registry (the configs), with each config's
# own arguments bound: a new scheme is tested by adding its file and its config
PATCH_EMBEDS = {name: registry.component("model/patch_embed", name) for name in registry.patch_embeds()}
SCHEMES = {name: registry.component("model/pos_embed", name) for name in registry.schemes()}
POOLS = ("cls", "gap", "seq")


def pytest_configure(config):
    """A GPU that torch cannot use would skip every CUDA test and leave the suite green."""
    from vit.training.device import unusable_gpu

    reason = None if torch.cuda.is_available() else unusable_gpu()
    if reason:
        pytest.exit(f"error: {reason} (CUDA_VISIBLE_DEVICES= make test runs the CPU tests alone)", returncode=1)


CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.fixture(autouse=True)
def cpu_tests_see_no_gpu(request):
    """The tests of CPU behaviour (bit-exact resume, Gloo processes, fp32) run on the CPU even
    on a machine with a GPU: the scripts they start see none (CUDA_VISIBLE_DEVICES), and in
    this process torch reports none, so `trainer.device=auto` is the CPU. The pin is its own
    MonkeyPatch, not the test's: a test's `monkeypatch.undo()` cannot lift it. Tests marked
    `cuda` are exempt."""
    if request.node.get_closest_marker("cuda") is not None:
        yield
        return
    with pytest.MonkeyPatch.context() as pin:
        pin.setenv("CUDA_VISIBLE_DEVICES", "")
        pin.setattr(torch.cuda, "is_available", lambda: False)
        pin.setattr(torch.cuda, "device_count", lambda: 0)
        yield


ALL_COMBINATIONS = list(itertools.product(PATCH_EMBEDS, POOLS, SCHEMES))


def tiny_vit(patch_embed="conv", pool="cls", scheme="learned_1d", **kwargs) -> VisionTransformer:
    """A 2-block, width-32 ViT on 16 px images with 4 px patches (a 4x4 grid)."""
    config = dict(img_size=16, patch_size=4, in_chans=3, num_classes=7, embed_dim=32, depth=2, num_heads=4)
    config.update(kwargs)
    return VisionTransformer(pool=pool, patch_embed=PATCH_EMBEDS[patch_embed], pos_embed=SCHEMES[scheme], **config)


def perturb_(model: torch.nn.Module) -> torch.nn.Module:
    """Add noise to every parameter (strong noise to positional tables) so that
    zero-initialised tables and biases do something."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (1.0 if name.startswith("pos_embed.") else 0.05))
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
