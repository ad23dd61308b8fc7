"""dvc.yaml's stage declares, as deps, every module its command runs and every data file.

The one stage runs the kfp pipeline (``python -m pipelines run training``). ``dvc repro``
reruns it only when one of its declared deps changed, so a module the run imports (at the
top or inside a function, of components/ or pipelines/) but does not declare, or a
DVC-tracked data file a dataset of params.yaml reads, would let a change go unnoticed.
The imports are read from the source with ``ast``: nothing is run.
"""

from __future__ import annotations

import ast
from pathlib import Path

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


OURS = ("components", "pipelines")


def _imports(path: Path) -> set[str]:
    """The ``components`` and ``pipelines`` modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(OURS):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if _module_file(f"{node.module}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(OURS))
    return found


def stage_files(module: str) -> set[str]:
    """Repository paths of the modules ``python -m <module>`` can run."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        todo.extend(_imports(path))
    return {str(_module_file(m).relative_to(REPO)) for m in seen}


STAGE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["training"]
DEPS = [str(d) for d in STAGE["deps"]]


def _covered(path: str) -> bool:
    return any(path == d or path.startswith(f"{d}/") for d in DEPS)


def test_the_stage_runs_the_kfp_pipeline():
    assert STAGE["cmd"].split()[:5] == ["python", "-m", "pipelines", "run", "training"]
    assert STAGE["params"] == [{"params.yaml": None}]  # every setting


def test_stage_deps_cover_the_code_it_runs():
    files = stage_files("pipelines.__main__") | stage_files("pipelines.training")
    assert "components/ingest.py" in files and "components/dvc_remote.py" in files
    missing = sorted(f for f in files - NOT_NEEDED if not _covered(f))
    assert not missing, f"dvc.yaml's stage does not list {missing} in its deps"


def test_stage_deps_cover_every_dvc_tracked_data_file():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tracked = sorted(spec["path"] for spec in params["datasets"].values()
                     if spec.get("path") and (REPO / f"{spec['path']}.dvc").is_file())
    assert tracked, "no DVC-tracked dataset in params.yaml"
    assert [p for p in tracked if not _covered(p)] == []


def test_the_import_reader_sees_lazy_imports():
    # evaluate imports the tuning table inside a function; train pulls in the trainers.
    assert "components/tune.py" in stage_files("components.evaluate")
    assert "components/trainers/sklearn.py" in stage_files("components.train")
    assert "components/package.py" in stage_files("components.gate")
