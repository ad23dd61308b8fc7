"""dvc.yaml names, for each stage, every module of components/ that the stage runs.

``dvc repro`` reruns a stage only when one of its declared deps changed, so a module the
stage imports (at the top or inside a function) but does not declare would let a changed
core go unnoticed. The imports are read from the source with ``ast``: nothing is run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Messages and the package marker only: a change to them cannot change a stage's outputs.
NOT_NEEDED = {"components/errors.py", "components/__init__.py"}


def _module_file(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """The ``components`` modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("components"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if _module_file(f"{node.module}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("components"))
    return found


def stage_files(stage: str) -> set[str]:
    """Repository paths of the modules ``python -m components.<stage>`` can run."""
    seen: set[str] = set()
    todo = [f"components.{stage}"]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        todo.extend(_imports(path))
    return {str(_module_file(m).relative_to(REPO)) for m in seen}


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_deps_cover_the_code_it_runs(stage):
    deps = [str(d) for d in STAGES[stage]["deps"]]
    assert f"components/{stage}.py" in deps
    missing = sorted(f for f in stage_files(stage) - NOT_NEEDED
                     if not any(f == d or f.startswith(f"{d}/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage!r} does not list {missing} in its deps"


def test_the_import_reader_sees_lazy_imports():
    # evaluate imports the tuning table inside a function; train pulls in the trainers.
    assert "components/tune.py" in stage_files("evaluate")
    assert "components/trainers/sklearn.py" in stage_files("train")
    assert "components/package.py" in stage_files("gate")
