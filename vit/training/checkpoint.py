"""Checkpoints that survive a crash mid-write and can never execute code when read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vit.training.disk import disk_full

REQUIRED = ("model", "optimizer", "scheduler", "epoch", "step", "config")


class CheckpointError(Exception):
    pass


# a run's checkpoints, newest first when all are intact: last.pt is replaced at every save
# and the one it replaces becomes previous.pt, so a damaged last.pt always leaves another
CHECKPOINTS = ("last.pt", "previous.pt", "best.pt")


def save_checkpoint(state: dict, folder: Path, is_best: bool) -> None:
    """best.pt first (when it is the best), then last.pt, keeping the last one as previous.pt.
    Should a write fail or the process die, the files already there stay intact."""
    if is_best:
        save_atomic(state, folder / "best.pt")
    save_atomic(state, folder / "last.pt", previous=folder / "previous.pt")


def save_atomic(state: dict, path: Path, previous: Path | None = None) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a crash
    mid-write leaves the checkpoint there as it was. With `previous`, the file replaced is
    kept under that name. A failed write removes its partial file; a full disk is one
    CheckpointError naming the folder."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # a partial file would go on filling the disk
        if disk_full(e, path.parent):
            raise CheckpointError(
                f"the disk is full: {path.name} could not be saved in {path.parent}; its partial file was "
                f"removed and the checkpoints already there are intact: free some space, then resume=auto"
            ) from e
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Read with weights_only=True: tensors and plain containers only, no code runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or a pickle that asks for code
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a checkpoint this trainer can read: {reason}") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise CheckpointError(f"{path} is not a training checkpoint (it lacks {', '.join(REQUIRED)})")
    state["config"] = _moved_targets(state["config"])
    return state


# modules that moved when the package was grouped into model/, training/ and studies/:
# a checkpoint saved before names its classes by the old paths
MOVED = {
    "vit.model.VisionTransformer": "vit.model.vision_transformer.VisionTransformer",
    "vit.pos_embed.": "vit.model.pos_embed.",
    "vit.patch_embed.": "vit.model.patch_embed.",
    "vit.data.": "vit.training.data.",
}


def _moved_targets(node):
    if isinstance(node, dict):
        return {key: _moved_targets(value) for key, value in node.items()}
    if isinstance(node, str):
        for old, new in MOVED.items():
            if node.startswith(old):
                return new + node[len(old) :]
    return node


def rng_state(device: torch.device) -> dict:
    """This process's random streams, as tensors and numbers (readable with weights_only):
    on CUDA, the stream of the process's own GPU only, so a resume with fewer GPUs visible
    finds what it needs."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what `rng_state` saved. A checkpoint made on the CPU leaves a GPU's stream as
    the seed set it; one from before this format holds a list, one state per visible GPU."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    cuda = state.get("cuda")
    if cuda is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)
