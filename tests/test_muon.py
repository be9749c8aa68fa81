"""optim=muon: Muon on the blocks' weight matrices, AdamW on the rest, as one optimizer that
the schedule, clipping and checkpoints treat as one."""

import copy

import pytest
import torch

from runs import TINY, train
from vit.cli import compose
from vit.model.vision_transformer import VisionTransformer
from vit.training.checkpoint import load_checkpoint
from vit.training.muon import Muon, MuonWithAdamW
from vit.training.optim import build_optimizer, load_optimizer_state, warmup_cosine
from vit.training.trainer import StopRequest, build

PROBE = ["experiment=probe", "data.num_train=256", "data.num_val=128", *TINY]


def small_model() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=32, depth=2, num_heads=2, pool="cls")


def ids(groups) -> set[int]:
    return {id(p) for g in groups for p in g["params"]}


def test_muon_takes_the_blocks_linear_weights_and_adamw_everything_else():
    model = small_model()
    optimizer = build_optimizer(model, 1e-3, 0.05, (0.9, 0.999), False, "muon")
    named = dict(model.named_parameters())
    matrices = {
        n
        for n in named
        if n.startswith("blocks.") and n.endswith(("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight"))
    }
    assert matrices and ids(optimizer.muon.param_groups) == {id(named[n]) for n in matrices}
    assert ids(optimizer.adamw.param_groups) == {id(p) for n, p in named.items() if n not in matrices}
    assert ids(optimizer.param_groups) == {id(p) for p in model.parameters()}
    # the patch embedding's matrix and the head stay with AdamW, as do the 1-D and positional ones
    assert {"patch_embed.proj.weight", "head.weight", "pos_embed.table", "cls_token"} <= set(named) - matrices


def test_the_schedule_sets_both_parts_learning_rates():
    optimizer = build_optimizer(small_model(), 1e-3, 0.05, (0.9, 0.999), False, "muon", muon_lr_scale=2.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=4, total_steps=10, min_lr_ratio=0.0)
    optimizer.step()
    scheduler.step()
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(2e-3 * 2 / 4)
    assert [g["lr"] for g in optimizer.adamw.param_groups] == pytest.approx([1e-3 * 2 / 4] * 2)


def steps(model, optimizer, count: int) -> None:
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for _ in range(count):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()


def test_a_state_dict_round_trip_continues_the_same_steps():
    model, other = small_model(), small_model()
    optimizer = build_optimizer(model, 1e-2, 0.05, (0.9, 0.999), False, "muon")
    steps(model, optimizer, 2)
    other.load_state_dict(model.state_dict())
    resumed = build_optimizer(other, 1e-2, 0.05, (0.9, 0.999), False, "muon")
    load_optimizer_state(resumed, copy.deepcopy(optimizer.state_dict()))  # as a checkpoint holds it
    assert isinstance(resumed, MuonWithAdamW) and ids(resumed.param_groups) == {id(p) for p in other.parameters()}
    steps(model, optimizer, 2)
    steps(other, resumed, 2)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="not Muon with AdamW"):
        resumed.load_state_dict(build_optimizer(other, 1e-2, 0.05, (0.9, 0.999), False).state_dict())


def test_a_muon_run_resumed_from_its_checkpoint_ends_where_the_uncut_run_does(tmp_path):
    args = [*PROBE, "optim=muon", "trainer.epochs=2"]
    train(tmp_path / "full", *args)
    train(tmp_path / "cut", *args, f"resume={tmp_path / 'full' / 'checkpoints' / 'previous.pt'}")
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert set(full["optimizer"]) == {"muon", "adamw"}
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, cut["model"][name]), name


def test_our_batched_muon_steps_as_torchs_muon_does():
    # torch.optim.Muon with the RMS-matching scale is the reference; ours batches same-shaped matrices
    shapes = [(12, 8), (8, 12), (12, 8), (8, 8), (20, 8)]
    torch.manual_seed(0)
    ours = [torch.randn(s, requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    a = Muon(ours, lr=0.02, weight_decay=0.1)
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(3):
        grads = [torch.randn(s) for s in shapes]
        for params, optimizer in ((ours, a), (theirs, b)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        for p, q in zip(ours, theirs, strict=True):
            assert torch.allclose(p, q, atol=1e-3, rtol=0), step
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        Muon([torch.zeros(3, requires_grad=True)], lr=0.1, weight_decay=0)


def newton_schulz_update(optimizer: Muon, steps: int = 1) -> list[torch.Tensor]:
    """The change that `steps` steps of fixed gradients make to Muon's matrices."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    torch.manual_seed(1)
    grads = [torch.randn(p.shape).to(p.dtype) for p in params]  # the same draws in any dtype
    for _ in range(steps):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() - b for p, b in zip(params, before, strict=True)]


def reference_update(optimizer: Muon) -> list[torch.Tensor]:
    """The same step with the Newton-Schulz iterations in fp64."""
    twin = Muon(
        [p.detach().double().requires_grad_() for g in optimizer.param_groups for p in g["params"]],
        lr=optimizer.param_groups[0]["lr"],
        weight_decay=optimizer.param_groups[0]["weight_decay"],
        ns_dtype=torch.float64,
    )
    return newton_schulz_update(twin)


@pytest.mark.parametrize(("precision", "fp32"), [("auto", True), ("fp32", True), ("bf16", False)])
def test_an_fp32_run_orthogonalises_in_fp32(tmp_path, monkeypatch, precision, fp32):
    # the AVX2 stand-in's variable hides the bf16 units of the CPU at hand, so that auto is fp32
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cfg = compose("train", [*PROBE, "optim=muon", "trainer.device=cpu", f"trainer.precision={precision}"])
    run = build(cfg, tmp_path, StopRequest())
    run.stop.restore()
    muon = run.optimizer.muon
    expected = reference_update(muon)
    worst = max((u.double() - e).abs().max().item() for u, e in zip(newton_schulz_update(muon), expected, strict=True))
    scale = max(e.abs().max().item() for e in expected)
    if fp32:
        assert worst < 1e-4 * scale  # fp32's rounding alone, of the update and of the weights
    else:
        assert worst > 1e-3 * scale  # bf16's 8-bit mantissa shows


def test_muon_in_fp32_and_bf16_steps_alike():
    # the published Muon iterates in bf16; in fp32 the step is the same to bf16's rounding
    shapes = [(64, 64), (64, 256), (256, 64)]
    torch.manual_seed(0)
    params = {dtype: [torch.randn(s, requires_grad=True) for s in shapes] for dtype in (torch.float32, torch.bfloat16)}
    params[torch.bfloat16] = [p.detach().clone().requires_grad_() for p in params[torch.float32]]
    updates = {
        dtype: newton_schulz_update(Muon(ps, lr=0.02, weight_decay=0.0, ns_dtype=dtype), steps=3)
        for dtype, ps in params.items()
    }
    for u32, u16 in zip(updates[torch.float32], updates[torch.bfloat16], strict=True):
        assert torch.nn.functional.cosine_similarity(u32.flatten(), u16.flatten(), dim=0) > 0.999
        assert (u32.norm() / u16.norm() - 1).abs() < 0.01


def scaled_step(model, optimizer, scaler, x, y, poison: bool = False, clip: bool = True) -> None:
    """A training step as the trainer takes it under fp16: scale, unscale (for clipping, when
    it clips), step."""
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if poison:  # an overflow in one of Muon's matrices
        model.blocks[0].mlp.fc1.weight.grad[0, 0] = float("inf")
    if clip:
        scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()


def test_the_grad_scaler_steps_muon_with_adamw_without_reading_found_inf_on_the_host(monkeypatch):
    model, twin = small_model(), small_model()
    optimizer = build_optimizer(model, 1e-2, 0.05, (0.9, 0.999), True, "muon")
    reference = build_optimizer(twin, 1e-2, 0.05, (0.9, 0.999), True, "muon")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    reads = []
    original_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(t) or original_item(t))
    scaled_step(model, optimizer, scaler, x, y)
    monkeypatch.undo()
    assert reads == []  # on a GPU, each .item() would wait for the step's kernels
    twin_loss = torch.nn.functional.cross_entropy(twin(x), y)
    twin_loss.backward()
    reference.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)  # a power-of-two scale, unscaled: the same step as without it

    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    scaled_step(model, optimizer, scaler, x, y, poison=True)
    assert scaler.get_scale() == 2.0**3  # the overflow halves the scale ...
    for name, tensor in model.state_dict().items():  # ... and the step is skipped, in both parts
        assert torch.equal(tensor, before[0][name]), name
    after = optimizer.state_dict()
    for part in ("muon", "adamw"):
        for key, state in before[1][part]["state"].items():
            for name, value in state.items():
                assert torch.equal(after[part]["state"][key][name], value), (part, key, name)


def test_without_clipping_the_step_unscales_the_gradients_itself():
    # optim.clip_grad=null: no unscale_ before the step, so GradScaler hands the step its scale
    model, twin = small_model(), small_model()
    optimizer = build_optimizer(model, 1e-2, 0.05, (0.9, 0.999), True, "muon")
    reference = build_optimizer(twin, 1e-2, 0.05, (0.9, 0.999), True, "muon")
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    scaled_step(model, optimizer, torch.amp.GradScaler("cpu", init_scale=2.0**4), x, y, clip=False)
    torch.nn.functional.cross_entropy(twin(x), y).backward()
    reference.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
