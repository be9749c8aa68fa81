"""Committed result rows: an ablation's finished runs as small text that outlives the machine.

Run folders under `outputs/` hold checkpoints and are not tracked, so a study of many hours
would be lost with its machine. Each finished, evaluated run is also one JSON line in
`results/ablations/NAME.jsonl` (tracked): its grid point, the key of its composed training
config, its summary, its evaluation and its per-epoch history, a few kilobytes. The ablation
skips a run whose row is there and rebuilds its report from the rows, so a fresh clone shows
the tables and plots (all but the position-similarity maps, which need the weights) without
training anything.

A row counts only for a run of the same composed config: change a training setting of the
ablation and its old rows no longer match, so those runs train again. A row also names the CPU
that trained it: the same seed trained on two CPUs parts as far as two seeds do (bf16 rounds
differently in each one's kernels), so a study whose runs are compared in pairs
(`same_machine: true`) counts only one machine's rows, and each machine may commit its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from omegaconf import OmegaConf

HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_acc1", "val_acc5", "images_per_sec", "epoch_s")
UNRESULTING = ("resume",)  # top-level keys that do not change what a run computes


class ResultsError(ValueError):
    """A results file that cannot be read: a line for the user, not a traceback."""


MOVE_AWAY = "move the run folder away, and the ablation trains that run afresh"


def config_key(cfg) -> str:
    """A short fingerprint of a composed training config (a DictConfig or plain dict): two runs
    with the same key train the same model on the same data in the same way."""
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    kept = {k: v for k, v in plain.items() if k not in UNRESULTING}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def machine() -> str:
    """This machine's CPU as /proc/cpuinfo names it, e.g. 'Intel(R) Xeon(R) Processor (family 6,
    model 167)'; '' where there is no /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "")
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def make_row(name: str, run: str, point: dict, key: str, summary: dict, evaluation: dict, history: list) -> dict:
    """One run as a committed row; paths and the overrides list stay out of the numbers."""
    return {
        "ablation": name,
        "run": run,
        "point": dict(point),
        "config_key": key,
        "overrides": summary.get("overrides", []),
        "cpu": machine(),
        "summary": {k: v for k, v in summary.items() if k != "overrides"},
        "evaluation": {k: v for k, v in evaluation.items() if k != "checkpoint"},
        "history": [{k: r[k] for k in HISTORY_KEYS if k in r} for r in history],
    }


def read_rows(path: Path) -> list[dict]:
    """The rows of a results file ([] when there is none). A damaged file is a ResultsError
    naming the file and line, never a half-read table."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not {"run", "point", "config_key", "summary"} <= row.keys():
                raise ValueError("not a result row")
        except ValueError as e:
            raise ResultsError(
                f"{path}, line {number}: {e}; restore it from git (git checkout -- {path}) or delete the line"
            ) from None
        rows.append(row)
    return rows


def stored_config(folder: Path) -> dict | None:
    """The config Hydra stored in a run folder (None without one); a damaged one is a ResultsError."""
    stored = folder / ".hydra" / "config.yaml"
    if not stored.exists():
        return None
    try:
        plain = OmegaConf.to_container(OmegaConf.load(stored), resolve=True)
        if not isinstance(plain, dict):
            raise ValueError("not a config")
    except Exception as e:  # yaml's and OmegaConf's many errors: the file cannot be read
        raise ResultsError(f"{stored} cannot be read ({str(e).splitlines()[0]}): {MOVE_AWAY}") from None
    return plain


def folder_key(folder: Path) -> str | None:
    """The config key of a run folder, from the config Hydra stored in it (None without one)."""
    plain = stored_config(folder)
    return None if plain is None else config_key(plain)


def first_difference(stored: dict, expected: dict) -> str:
    """The first setting in which two composed configs differ, as `key=stored (expected)`."""
    a, b = flat(stored), flat(expected)
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] not in UNRESULTING and a.get(key) != b.get(key):
            return f"{key}={a.get(key)} where the ablation has {b.get(key)}"
    return "no setting differs"


def flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


class Ledger:
    """The rows of one results file, by config key and by the machine that trained them, and
    the one way to add to it; `others` (the other studies' files) are read too, so a run two
    studies share trains once. Threads of one ablation may add at once (jobs=2); each write
    replaces the whole file atomically, so a kill leaves the old file or the new one, never
    half of either."""

    def __init__(self, path: Path, others: list[Path] = ()):
        self.path = path
        self.rows = {identity(row): row for row in read_rows(path)}
        self.known, self.found_in = {}, {}  # the other studies' rows, and the file of each
        for other in others:
            for row in read_rows(other):
                self.known[identity(row)], self.found_in[identity(row)] = row, other
        self._lock = threading.Lock()

    @classmethod
    def in_folder(cls, folder: Path, name: str) -> Ledger:
        """NAME.jsonl in `folder`, with every other study's file there to look up."""
        return cls(folder / f"{name}.jsonl", sorted(p for p in folder.glob("*.jsonl") if p.stem != name))

    def rows_of(self, key: str) -> list[dict]:
        """Every row of `key`, one per machine that trained it, this study's own first."""
        own = [row for (k, _), row in self.rows.items() if k == key]
        return own + [row for (k, cpu), row in self.known.items() if k == key and (k, cpu) not in self.rows]

    def get(self, key: str, cpu: str | None = None) -> dict | None:
        """The row of `key` (trained on `cpu`, when one is named), this study's own first."""
        return next((row for row in self.rows_of(key) if cpu is None or row.get("cpu", "") == cpu), None)

    def file_of(self, key: str, cpu: str | None = None) -> Path:
        """The results file that holds the row `get` finds (this study's own when none)."""
        row = self.get(key, cpu)
        return self.path if row is None or identity(row) in self.rows else self.found_in[identity(row)]

    def add(self, row: dict) -> None:
        with self._lock:
            self.rows[identity(row)] = row
            ordered = sorted(
                self.rows.values(), key=lambda r: (r["ablation"], r["run"], r["config_key"], r.get("cpu", ""))
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".tmp")
            partial.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
            os.replace(partial, self.path)


def identity(row: dict) -> tuple[str, str]:
    """A row's config key and machine: one run of a config on each machine may be committed."""
    return row["config_key"], row.get("cpu", "")
