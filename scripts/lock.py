"""Write requirements.lock: every package `pip install -e ".[dev]"` resolves to, pinned.

    make lock            # re-resolve, then rebuild .venv from the new lock and run the tests
    python scripts/lock.py

pip itself resolves (`pip install --dry-run --report`), with this machine's settings as they
are: its indexes, find-links and constraints (here: torch <= 2.14.1, which lies on disk).
The result is a constraints file, not a requirements file: `pip install -c requirements.lock
-e ".[dev]"` pins every package a platform needs and skips the pins it does not need (the
CUDA libraries that Linux's torch wheels pull in, on macOS), so one lock serves every platform
that has wheels of these versions. pyproject.toml keeps the version ranges.
"""

import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def resolve() -> list[tuple[str, str]]:
    """(name, version) of every package pip would install into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                "-e",
                ".[dev]",
            ],
            cwd=ROOT,
            check=True,
        )
        installs = json.loads(report.read_text())["install"]
    ours = "vit-positions"
    pins = {(re.sub(r"[-_.]+", "-", p["metadata"]["name"]).lower(), p["metadata"]["version"]) for p in installs}
    return sorted(pin for pin in pins if pin[0] != ours)


def main() -> None:
    pins = resolve()
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split()[1]
    header = [
        "# Constraints for every direct and transitive dependency; install with",
        '#     pip install -c requirements.lock -e ".[dev]"',
        f"# Written by scripts/lock.py (make lock) on {time.strftime('%Y-%m-%d')}: pip {pip}, "
        f"CPython {platform.python_version()}, {platform.system()} {platform.machine()}.",
        "# Do not edit by hand: change the ranges in pyproject.toml, then run make lock.",
    ]
    LOCK.write_text("\n".join(header + [f"{name}=={version}" for name, version in pins]) + "\n")
    print(f"{LOCK.name}: {len(pins)} packages pinned")


if __name__ == "__main__":
    main()
