"""The Hydra interface: every option of every group composes and builds, bad values are one line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_files import make_class_folders
from vit import VisionTransformer, registry
from vit.cli import ConfigError, check_config, sleep_while_waiting
from vit.instantiate import build_model, instantiate_group, with_class_count
from vit.registry import options
from vit.studies.ablation import grid_of

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
GROUPS = ["data", "model", "model/patch_embed", "model/pos_embed"]
SMALL = ["model.depth=1"]  # building is what is tested; keep it quick
OPEN_SIZE = ["model.embed_dim=64", "model.num_heads=4", "model.depth=1"]  # for the size-less `vit`


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_every_group_has_its_options():
    assert {"none", "learned_1d", "sincos_2d", "relative_bias", "rope_2d"} <= set(registry.schemes())
    assert registry.schemes()[:2] == ["none", "learned_1d"]  # the baselines the report compares with
    assert {"conv", "conv_stem", "linear"} <= set(registry.patch_embeds())
    assert {"vit_cifar", "vit_tiny", "vit_small", "vit_base"} <= set(options("model"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_builds(group, option, tmp_path):
    overrides = [f"{group}={option}"] + (OPEN_SIZE if option == "vit" else SMALL)
    if option == "imagefolder":  # its number of classes is the folders'
        overrides.append(f"data.root={make_class_folders(tmp_path, classes=('a', 'b', 'c', 'd', 'e'))}")
    cfg = with_class_count(compose_train(overrides))
    model = build_model(cfg)
    assert isinstance(model, VisionTransformer)
    if group.startswith("model/"):  # the chosen part is the one built
        part = getattr(model, group.split("/")[1])
        target = OmegaConf.select(cfg, group.replace("/", "."))._target_
        assert f"{type(part).__module__}.{type(part).__name__}" == target
    # the data config is the single source of the input and output sizes
    assert model.img_size == (cfg.data.img_size,) * 2
    assert model.head.out_features == cfg.data.num_classes
    assert model.patch_embed(torch.zeros(1, cfg.data.in_chans, *model.img_size)).ndim == 3


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_builds(experiment):
    cfg = compose_train([f"experiment={experiment}"])
    model = build_model(cfg)
    assert model.img_size == (cfg.data.img_size,) * 2 and cfg.trainer.epochs > 0


@pytest.mark.parametrize("ablation", options("ablation"))
def test_every_ablation_composes_into_runnable_training_overrides(ablation):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("ablate", overrides=[f"ablation={ablation}"])
    assert cfg.ablation.name == ablation and set(grid_of(cfg.ablation)["model/pos_embed"]) <= set(registry.schemes())
    model = build_model(compose_train([*cfg.ablation.train, "model.depth=1"]))  # the shared overrides compose
    assert isinstance(model, VisionTransformer)


def test_the_default_is_the_cifar_preset():
    cfg = compose_train([])
    assert (cfg.data.name, cfg.model.patch_size, cfg.model.embed_dim, cfg.model.depth) == ("cifar10", 4, 192, 9)
    assert (cfg.model.num_heads, cfg.model.mlp_ratio, cfg.model.pool) == (12, 2.0, "cls")


def test_overrides_reach_the_model():
    cfg = compose_train(
        ["model=vit_small", "model/pos_embed=sincos_2d", "model/patch_embed=linear", "model.pool=gap", "model.depth=6"]
    )
    model = build_model(cfg)
    assert (len(model.blocks), model.pool, model.head.in_features) == (6, "gap", 384)
    assert type(model.pos_embed).__name__ == "SinCos2d" and type(model.patch_embed).__name__ == "LinearPatchEmbed"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.embed_dim=100"], "model: embed_dim 100 is not divisible by num_heads 12"),
        (["model/pos_embed=sincos_2d", "model.embed_dim=198", "model.num_heads=6"], "divisible by 4, got 198"),
        (["model/pos_embed=rope_2d", "model.embed_dim=192", "model.num_heads=32"], "head width"),
        (["model.img_size=30"], "image size 30x30 is not a multiple of the patch size 4"),
        (["model.embed_dim=wide"], "embed_dim must be a positive integer, got 'wide'"),
        (["model=vit"], "Missing mandatory value: model.embed_dim"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        build_model(compose_train(overrides))
    assert len(str(error.value).splitlines()) == 1 and message in str(error.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.embed_dim=100"],
        ["model.img_size=30"],
        ["model.embed_dim=wide"],
        ["model=vit"],
        ["model.depth=0"],
        ["model.pool=max"],
    ],
)
def test_the_check_before_torch_says_what_building_would(overrides):
    # scripts check the config before importing torch; the message is the model's own
    cfg = compose_train(overrides)
    with pytest.raises(ConfigError) as built:
        build_model(cfg)
    with pytest.raises(ConfigError) as checked:
        check_config(cfg)
    assert str(checked.value) == str(built.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.warmup_epochs=soon"], "optim.warmup_epochs must be auto or a number of epochs >= 0, got 'soon'"),
        (["optim.warmup_epochs=-1"], "optim.warmup_epochs must be auto or a number of epochs >= 0, got -1"),
        (["optim.name=lion"], "optim.name must be adamw or muon, got 'lion'"),
        (["trainer.tta=crops"], "trainer.tta must be one of none, flip, flip_shift, got 'crops'"),
    ],
)
def test_bad_training_values_are_caught_before_torch(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(compose_train(overrides))


def test_class_folders_leave_the_number_of_classes_to_the_data(tmp_path):
    cfg = compose_train(["data=imagefolder", f"data.root={make_class_folders(tmp_path)}", "data.classes=2"])
    assert cfg.data.num_classes is None and cfg.model.num_classes is None
    check_config(cfg)  # not an error before the data is read
    counted = with_class_count(cfg)
    assert counted.data.num_classes == 2 and counted.model.num_classes == 2  # the model follows the data
    assert cfg.data.num_classes is None  # the caller's config is left as it was
    given = compose_train(["data=imagefolder", "data.root=nowhere", "data.num_classes=7"])
    assert with_class_count(given) is given  # a given number is not checked against folders here


def test_loading_processes_let_the_step_threads_sleep(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    sleep_while_waiting(compose_train([]))  # CIFAR in memory: no loading processes
    assert "OMP_WAIT_POLICY" not in os.environ
    sleep_while_waiting(compose_train(["data=imagefolder", "data.num_workers=0"]))
    assert "OMP_WAIT_POLICY" not in os.environ
    sleep_while_waiting(compose_train(["data=imagefolder"]))
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stays
    sleep_while_waiting(compose_train(["data=imagefolder"]))
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_check_before_torch_passes_every_preset():
    for experiment in options("experiment"):
        check_config(compose_train([f"experiment={experiment}"]))
    for model in [m for m in options("model") if m != "vit"]:
        check_config(compose_train([f"model={model}"]))


def describe(*overrides, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "describe.py"), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_describe_reports_the_model_it_builds(tmp_path):
    run = describe("model/pos_embed=relative_bias", "model.pool=gap", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # 9 blocks x 12 heads x (2*8-1)^2 offsets, no class entries with average pooling
    assert "pos_embed=relative_bias, pool=gap" in run.stdout
    assert re.search(rf"pos_embed +{9 * 12 * 15 * 15:,}\n", run.stdout)
    # a float mask with a gradient: never flash (CPU here, or GPU)
    assert re.search(
        r"attention +(math|memory-efficient|cuDNN) kernel on (cpu|cuda:\d) in (bf16|fp32) \(training\)", run.stdout
    )
    assert re.search(
        r"step +[\d,]+ operators dispatched per eager training step here, [\d,]+ of them not views", run.stdout
    )
    assert list(tmp_path.iterdir()) == []  # describing writes nothing


def test_describe_bad_value_is_one_line_without_traceback(tmp_path):
    run = describe("model/pos_embed=rope_2d", "model.num_heads=48", "model.embed_dim=96", cwd=tmp_path)
    assert run.returncode == 2
    assert (
        run.stderr.strip() == "error: model: rope_2d needs a head width (embed_dim / num_heads) divisible by 4, got 2"
    )


def test_unknown_scheme_lists_the_options(tmp_path):
    run = describe("model/pos_embed=no_such_scheme", cwd=tmp_path)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "no_such_scheme" in run.stderr and all(s in run.stderr for s in options("model/pos_embed"))


def test_describe_sweeps_every_scheme(tmp_path):
    run = describe("-m", f"model/pos_embed={','.join(options('model/pos_embed'))}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for scheme in options("model/pos_embed"):
        assert f"pos_embed={scheme}," in run.stdout


class Buggy:
    """A component with a bug in its own code: a TypeError raised inside it."""

    def __init__(self, width: int, **unused):
        self.half = width / None


@pytest.mark.parametrize(
    "node,expected",
    [
        ({"_target_": "test_configs.Buggy", "width": 2}, None),  # a bug: its own error, traceback kept
        ({"_target_": "test_configs.Buggy", "widht": 2}, "model: .*missing 1 required"),  # a misspelt argument
        ({"_target_": "test_configs.Nothing"}, "model: No module named"),  # no such component
        ({"_target_": "test_configs.Buggy", "width": "???"}, "Missing mandatory value"),
        (
            {
                "_target_": "vit.model.vision_transformer.VisionTransformer",
                "img_size": 16,
                "patch_size": 4,
                "num_classes": 3,
                "embed_dim": 30,
                "depth": 1,
                "num_heads": 4,
            },
            "model: embed_dim 30 is not divisible by num_heads 4",  # our own check: a ConfigError
        ),
    ],
)
def test_only_configuration_errors_become_config_errors(node, expected):
    cfg = OmegaConf.create({"model": node})
    if expected is None:
        with pytest.raises(TypeError, match="unsupported operand") as raised:
            instantiate_group(cfg, "model")
        assert not isinstance(raised.value, ConfigError)
        assert any(frame.name == "__init__" for frame in raised.traceback)  # the bug's own frame
    else:
        with pytest.raises(ConfigError, match=expected) as raised:
            instantiate_group(cfg, "model")
        assert "\n" not in str(raised.value)


def test_a_bug_in_a_component_exits_1_with_its_traceback(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            f"hydra.run.dir={tmp_path}",
            "experiment=digits",
            "data._target_=test_configs.Buggy",
            "+data.width=2",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
    )
    assert run.returncode == 1 and "Traceback" in run.stderr and "TypeError: unsupported operand" in run.stderr
    assert "error: " not in run.stderr
