"""The import graph of `vit/` follows the architecture: the model at the bottom, the training
loop above it, the scripts' edge (cli.py) and the studies on top, and no circles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vit"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every vit module the file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("vit")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vit"):
            for alias in node.names:  # `from vit.training.data import cache_format` names a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(files)) - {name} for name, path in files.items()}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_model_and_the_training_loop_import_nothing_above_them():
    above = ("vit.cli", "vit.studies")
    for module, targets in graph().items():
        if within(module, "vit.model") or within(module, "vit.training"):
            wrong = sorted(t for t in targets if any(within(t, a) for a in above))
            assert not wrong, f"{module} imports {wrong}"
        if within(module, "vit.model"):
            wrong = sorted(t for t in targets if within(t, "vit.training"))
            assert not wrong, f"{module} imports {wrong}"


def test_no_modules_import_each_other():
    edges = graph()
    circles = sorted({tuple(sorted((a, b))) for a, targets in edges.items() for b in targets if a in edges.get(b, ())})
    assert circles == []


def test_the_check_sees_the_imports_it_must_police():
    # the parser itself: a nested import and a submodule named in `from ... import` both count
    edges = graph()
    assert "vit.training.similarity_image" in edges["vit.training.trainer"]  # imported inside a function
    assert "vit.training.data.cache_format" in edges["vit.training.data.decoded_cache"]
