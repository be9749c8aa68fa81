"""`scripts/figures.py` redraws the docs' figures from the committed results alone."""

import shutil
import subprocess
import sys
from pathlib import Path

from matplotlib import image

from vit.studies.doc_figures import FIGURES

ROOT = Path(__file__).resolve().parents[1]


def figures(*args):
    command = [sys.executable, str(ROOT / "scripts" / "figures.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_the_committed_results_redraw_every_figure(tmp_path):
    result = figures("--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FIGURES)
    for name in FIGURES:
        path = tmp_path / name
        assert path.stat().st_size < 200_000, name  # light enough for the README
        height, width, _ = image.imread(path).shape
        assert width >= 600 and height >= 300, name  # readable at the README's width
    assert all(name in (ROOT / "README.md").read_text() + docs_text() for name in FIGURES)  # each is shown


def docs_text() -> str:
    return "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))


def test_a_damaged_results_file_is_one_line_naming_it(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results)
    rows = results / "ablations" / "fmnist_patch.jsonl"
    rows.write_text(rows.read_text() + '{"run": "cut short\n')
    result = figures("--results", str(results), "--out", str(tmp_path / "figures"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "fmnist_patch.jsonl" in result.stderr and "Traceback" not in result.stderr
