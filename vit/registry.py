"""The one registry of what can be swapped: a component exists when its config does.

`configs/model/pos_embed/<name>.yaml` names a positional scheme, `configs/model/patch_embed/
<name>.yaml` a patch embedding. The tests, the benchmark, the ablation presets and the
command line's error messages all list them from here, so adding a scheme is one file of
code and one config, and nothing else to edit. Torch-free until a component is built.
"""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASELINES = ("none", "learned_1d")  # the report compares every scheme with these two


def options(group: str) -> list[str]:
    """The options of a config group, e.g. options("data"), sorted."""
    return sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))


def schemes() -> list[str]:
    """Every positional scheme: the two baselines first, then the others by name."""
    names = options("model/pos_embed")
    return [b for b in BASELINES if b in names] + [n for n in names if n not in BASELINES]


def patch_embeds() -> list[str]:
    return options("model/patch_embed")


def component(group: str, name: str):
    """What the model receives for this option: the class, with its config's arguments bound
    (a `functools.partial`), exactly as `model/<group>=<name>` gives it."""
    import hydra
    from omegaconf import OmegaConf

    path = CONFIGS / group / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"no {group} named {name!r}: choose one of {', '.join(options(group))}")
    return hydra.utils.instantiate(OmegaConf.load(path))
