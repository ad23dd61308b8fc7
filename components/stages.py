"""The stage graph: every stage of Slipway declared once.

A :class:`Stage` names what the rest of the project needs to know about a stage: its key
(``kfp.task_profiles`` and the stage CLIs use it), its title on the Kubeflow dashboard, its
kfp component (in :mod:`components.kfp_components`), its pure core module, the image role
its task runs in, and whether its task may be reused from the cache. The pipelines, the
local run's summary and progress, the benchmarks and the test fixtures all read it from
here; a stage's artifact inputs and outputs are read from its kfp component's own
signature, so they are written once too.

:func:`code_version` hashes the source of a stage's core and of every ``components``
module it imports (lazily too), so a task's cache key changes exactly when the code it
runs changes.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent

# A task's environment, set by the pipeline: the hash of the code its stage runs (so the
# cache key changes exactly when that code does) and its image reference. Slipway's images
# set IN_IMAGE_ENV themselves, so a task knows it runs in IMAGE_ENV and not as a local
# subprocess (which gets the same variables).
CODE_VERSION_ENV = "SLIPWAY_CODE_VERSION"
IMAGE_ENV = "SLIPWAY_IMAGE"
IN_IMAGE_ENV = "SLIPWAY_IN_IMAGE"

# Image roles (one image each, `make images`); "trainer" resolves to one of them by the
# framework that fits the model (see image_role).
ROLES = ("stages", "torch", "keras", "serving")
TRAINER = "trainer"
FRAMEWORK_ROLES = {"sklearn": "stages", "torch": "torch", "keras": "keras"}


@dataclass(frozen=True)
class Stage:
    """One stage of the pipelines.

    Attributes:
        key: its name in params.yaml (``kfp.task_profiles``) and for the stage CLI.
        title: the task's display name on the Kubeflow dashboard.
        op: the kfp component's function name in :mod:`components.kfp_components`.
        core: the module holding the stage's pure logic.
        role: the image its task runs in, or ``"trainer"`` for the framework's image.
        cached: whether a task may be served from the cache. Gate and package compare
            with, and write to, the model store: never reused.
        section: the params.yaml section its ``rules`` parameter takes.
        takes: artifact input -> ``"<stage>.<output>"`` it is fed from. Every other input
            is the pipeline parameter of the same name.
        after: stages it runs after without taking their outputs.
        when: a stage whose boolean result must be true for this one to run.
        provides: another name later stages know its task by (``fit``: the model).
        remote: it reads from or writes to the DVC remote (it needs its credentials).
    """

    key: str
    title: str
    op: str
    core: str
    role: str = "stages"
    cached: bool = True
    section: str | None = None
    takes: dict[str, str] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    when: str | None = None
    provides: str | None = None
    remote: bool = False

    @property
    def task(self) -> str:
        """kfp's name for the task (and its folder under a local run)."""
        return self.op.replace("_", "-")

    def component(self, op: str | None = None) -> Any:
        """The kfp component (imports kfp): the stage's own, or the variant ``op``. Looked
        up by name, not imported, so that the stage graph itself does not reach every
        stage's code (see code_version)."""
        return getattr(importlib.import_module("components.kfp_components"), op or self.op)

    def source(self, name: str) -> tuple[str, str]:
        """The (stage, output) an artifact input is fed from."""
        stage_, output = self.takes[name].split(".")
        return stage_, output


_FEATURES = {"train": "preprocess.train_features", "val": "preprocess.val_features"}
_STAGES = (
    Stage("ingest", "Ingest dataset", "ingest_op", "components.ingest", remote=True),
    Stage("validate", "Validate data", "validate_op", "components.validate",
          section="validate", takes={"table": "ingest.table"}),
    Stage("split", "Split train / val / test", "split_op", "components.split",
          section="split", takes={"table": "ingest.table"}, after=("validate",)),
    Stage("preprocess", "Fit preprocessing", "preprocess_op", "components.preprocess",
          section="preprocess",
          takes={"train": "split.train", "val": "split.val", "test": "split.test"}),
    Stage("train", "Train model", "train_op", "components.train", role=TRAINER,
          section="train", takes=_FEATURES, provides="fit"),
    Stage("trials", "Draw trials", "trials_op", "components.tune"),
    Stage("trial", "Score trial (CV + validation)", "trial_op", "components.tune",
          role=TRAINER, section="train", takes=_FEATURES),
    Stage("select", "Select best trial", "select_op", "components.tune"),
    Stage("retrain", "Retrain best on train + val", "retrain_op", "components.tune",
          role=TRAINER, section="train", takes={**_FEATURES, "tuning": "select.best"},
          provides="fit"),
    Stage("evaluate", "Evaluate on test split", "evaluate_op", "components.evaluate",
          role=TRAINER, takes={"model": "fit.model", "test": "preprocess.test_features"}),
    Stage("gate", "Gate", "gate_op", "components.gate", cached=False, section="gate",
          takes={"evaluation": "evaluate.evaluation"}),
    Stage("package", "Package model version", "package_op", "components.package",
          role=TRAINER, cached=False, when="gate", remote=True,
          takes={"transformer": "preprocess.transformer", "model": "fit.model",
                 "evaluation": "evaluate.evaluation"}),
)
STAGES: dict[str, Stage] = {s.key: s for s in _STAGES}

# The pipelines, as the stages they run in order.
PIPELINE_STAGES: dict[str, tuple[str, ...]] = {
    "training": ("ingest", "validate", "split", "preprocess", "train", "evaluate", "gate",
                 "package"),
    "tuning": ("ingest", "validate", "split", "preprocess", "trials", "trial", "select",
               "retrain", "evaluate", "gate", "package"),
}


def running_image() -> str | None:
    """The image reference (by digest once built) this task runs in; None outside one."""
    import os

    return os.environ.get(IMAGE_ENV) or None if os.environ.get(IN_IMAGE_ENV) else None


def stage(key: str) -> Stage:
    """The stage named ``key``; an unknown key is an error that lists the known ones."""
    try:
        return STAGES[key]
    except KeyError:
        raise KeyError(f"unknown stage {key!r}; stages: {', '.join(STAGES)}") from None


def by_task(task: str) -> Stage | None:
    """The stage whose kfp task name is ``task`` (``"train-op"``), or None."""
    return next((s for s in _STAGES if s.task == task), None)


def stages_of(pipeline: str) -> list[Stage]:
    """The stages of a pipeline, in order."""
    return [STAGES[k] for k in PIPELINE_STAGES[pipeline]]


def image_role(stage_: Stage, frameworks: set[str] | frozenset[str]) -> str:
    """The image role a stage's task runs in.

    Args:
        stage_: the stage.
        frameworks: the training frameworks the pipeline's models use (``train.framework``,
            or every framework of the tuning search space).

    Returns:
        A role of :data:`ROLES`. A trainer stage whose models span two deep-learning
        frameworks has no single image: that is an error naming them.
    """
    if stage_.role != TRAINER:
        return stage_.role
    roles = {FRAMEWORK_ROLES[f] for f in frameworks} - {"stages"} or {"stages"}
    if len(roles) > 1:
        raise ValueError(
            f"stage {stage_.key!r} would need the {' and '.join(sorted(roles))} images at "
            "once: tune one deep-learning framework per run"
        )
    return roles.pop()


def _imports(path: Path) -> set[str]:
    """The ``components`` modules a file imports, anywhere in it (lazy imports too)."""
    return _imports_in(ast.parse(path.read_text(), str(path)))


def _imports_in(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("components.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "components":
                found |= {f"components.{a.name}" for a in node.names}
            elif node.module.startswith("components."):
                found.add(node.module)
                # `from components.trainers import sklearn` names a submodule
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _module_file(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for candidate in (PACKAGE_DIR / rel.with_suffix(".py"), PACKAGE_DIR / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _op_imports(op: str) -> set[str]:
    """The ``components`` modules a kfp component's body imports (its adapters' helpers)."""
    tree = ast.parse((PACKAGE_DIR / "kfp_components.py").read_text())
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == op)
    return _imports_in(body)


def source_files(*modules: str) -> list[Path]:
    """The files of ``modules`` and of every ``components`` module they reach, sorted."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        path = _module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(_imports(path))
        if path.name == "__init__.py":  # a package: every module in it may be loaded
            todo.extend(f"components.{'.'.join(p.relative_to(PACKAGE_DIR).with_suffix('').parts)}"
                        for p in path.parent.glob("*.py") if p.name != "__init__.py")
    return sorted(seen)


@cache
def code_version(key: str, op: str | None = None) -> str:
    """A hash of the source a stage runs: its core and every ``components`` module that it
    or its kfp component's body imports (the body itself is part of the task's command).
    ``op``: the component that runs the stage when it is not the stage's own (a variant,
    e.g. ``train_nodes_op``)."""
    stage_ = stage(key)
    digest = hashlib.sha256()
    for path in source_files(stage_.core, *_op_imports(op or stage_.op)):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
