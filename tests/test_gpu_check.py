"""scripts/gpu_check.py: its CPU mode end to end (what CI can run of it), and its refusal
without a GPU."""

import json

from runs import script
from vit import registry


def test_the_gpu_check_runs_its_checks_small_on_a_cpu_and_writes_its_report(tmp_path):
    proc = script("gpu_check.py", "--cpu", f"--out={tmp_path / 'check'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "check" / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == ["tests", "schemes", "host syncs", "benchmark", "fashion-mnist recipe", "class folders"]
    assert checks["host syncs"]["status"] == "skipped"  # CUDA's sync debug mode: nothing to count on a CPU
    assert checks["fashion-mnist recipe"]["status"] in ("ok", "skipped")  # CI has no Fashion-MNIST
    assert all(checks[name]["status"] == "ok" for name in ("tests", "schemes", "benchmark", "class folders"))
    schemes = checks["schemes"]["results"]
    assert list(schemes) == registry.schemes()
    assert all(r["step_ms"] > 0 and r["kernel"] in ("math", "flash") for r in schemes.values())
    assert "skipped" in checks["tests"]["results"]["cuda"]  # pytest -m cuda ran, and skipped on a CPU
    folders = checks["class folders"]["results"]
    assert folders["vit_tiny PIL images/s"] > 0 and folders["vit_tiny cache images/s"] > 0
    assert 0 <= folders["vit_tiny PIL data wait"] < 1 and 0 <= folders["vit_tiny cache data wait"] < 1
    assert folders["cache, host: boxes and copies, images/s per core"] > 0
    markdown = (tmp_path / "check" / "report.md").read_text()
    assert "| schemes | ok |" in markdown and "| rope_mixed | " in markdown
    assert f"report: {tmp_path / 'check' / 'report.md'}" in proc.stdout


def test_the_gpu_check_without_a_gpu_is_one_line(tmp_path):
    proc = script(  # conftest hides any GPU from the scripts a test starts
        "gpu_check.py", f"--out={tmp_path}", cwd=tmp_path
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: no CUDA GPU here") and len(proc.stderr.strip().splitlines()) == 1
