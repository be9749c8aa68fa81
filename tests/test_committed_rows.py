"""The committed studies still stand in for their runs.

A committed row counts only while its key matches the config its ablation composes today. A
changed default or a new setting changes every key, and then `train=false` no longer finds
hours of committed runs, and the next `ablate.py` trains them all again. This test says so at
once, naming the study and the rows, so that such a change is made on purpose.
"""

import functools
import importlib.util
from pathlib import Path

import pytest

from vit.cli import compose
from vit.studies.results import config_key, read_rows

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "results" / "ablations").glob("*.jsonl"))


@functools.cache
def ablate_script():
    spec = importlib.util.spec_from_file_location("ablate_script", ROOT / "scripts" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_committed_studies_to_check():
    assert STUDIES, "results/ablations/ holds no committed rows"


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_each_committed_row_matches_a_run_its_ablation_composes_today(path):
    ablation = compose("ablate", [f"ablation={path.stem}"]).ablation
    configs = ablate_script().run_configs(ablation, list(ablation.train))
    keys = {name: config_key(config) for name, config in configs.items()}
    rows = read_rows(path)
    assert rows, f"{path.name} is empty"
    stale = [row["run"] for row in rows if keys.get(row["run"]) != row["config_key"]]
    named = ", ".join(stale[:3]) + (", ..." if len(stale) > 3 else "")
    assert not stale, (
        f"{len(stale)} of {len(rows)} committed rows of {path.stem} no longer match the config "
        f"their runs compose today ({named}): a setting or default changed since they trained"
        "; keep the old behaviour as the default, or retrain and recommit the study"
    )
