"""trainer.precision=auto per device, and the attention kernels under each autocast."""

import pytest
import torch
import torch.nn.functional as F

from vit.errors import ConfigError
from vit.training import precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AMX = {"fpu", "avx2", "avx512f", "amx_tile", "amx_bf16"}
AVX512_BF16 = {"fpu", "avx2", "avx512f", "avx512_bf16"}
AVX2_ONLY = {"fpu", "avx", "avx2", "fma"}


@pytest.mark.parametrize(
    ("device", "flags", "expected"),
    [
        (CPU, AMX, torch.bfloat16),
        (CPU, AVX512_BF16, torch.bfloat16),
        (CPU, AVX2_ONLY, None),  # emulated bf16 is many times slower: fp32
        (CPU, set(), None),  # no /proc/cpuinfo (macOS, Windows): fp32
        (CUDA, AVX2_ONLY, torch.bfloat16),
    ],
)
def test_auto_is_bf16_where_the_device_has_it(device, flags, expected):
    assert precision.choose_precision("auto", device, flags) == expected


def test_a_named_precision_is_taken_as_given():
    assert precision.choose_precision("bf16", CPU, AVX2_ONLY) == torch.bfloat16
    assert precision.choose_precision("fp32", CPU, AMX) is None
    assert precision.choose_precision("fp16", CUDA, set()) == torch.float16
    with pytest.raises(ConfigError, match="trainer.precision must be"):
        precision.choose_precision("tf32", CPU, AMX)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert precision.cpu_flags(x86) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert precision.cpu_has_native_bf16(precision.cpu_flags(x86))
    assert not precision.cpu_has_native_bf16(precision.cpu_flags(arm))  # not measured there: fp32
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_cpu_bf16_attention_takes_the_math_kernel():
    # the fused CPU kernel's bf16 backward pass is the slow part of a bf16 step on CPU
    with precision.autocast(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
    with precision.autocast(CPU, None):
        assert not torch.is_autocast_enabled("cpu") and torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()  # and it leaves the choice as it found it


def test_cpu_bf16_attention_matches_fp32():
    qkv = torch.randn(3, 2, 4, 17, 16, requires_grad=True)
    q, k, v = qkv
    reference = F.scaled_dot_product_attention(q, k, v)
    with precision.autocast(CPU, torch.bfloat16):
        low = F.scaled_dot_product_attention(q @ torch.eye(16), k @ torch.eye(16), v @ torch.eye(16))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=3e-2, rtol=3e-2)
    low.float().sum().backward()
    assert qkv.grad is not None and torch.isfinite(qkv.grad).all()


@pytest.mark.parametrize(
    ("environ", "hidden"),
    [
        ({}, False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, True),  # the AVX2 stand-in's variables
        ({"ATEN_CPU_CAPABILITY": "avx2"}, True),
        ({"DNNL_MAX_CPU_ISA": "avx512_core"}, True),  # oneDNN's older name, any case
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, False),
        ({"ONEDNN_MAX_CPU_ISA": "ALL", "ATEN_CPU_CAPABILITY": "avx512"}, False),
    ],
)
def test_kernels_held_below_the_bf16_units_hide_them(environ, hidden):
    assert precision.cpu_has_native_bf16(AMX, environ) is not hidden
    assert precision.choose_precision("auto", CPU, AMX, environ) == (None if hidden else torch.bfloat16)
    assert precision.choose_precision("auto", CUDA, AMX, environ) == torch.bfloat16  # a GPU is not held


def test_muons_iterations_follow_the_runs_precision():
    assert precision.ns_dtype(None) == torch.float32  # an fp32 run: no emulated bf16
    assert precision.ns_dtype(torch.bfloat16) == precision.ns_dtype(torch.float16) == torch.bfloat16
