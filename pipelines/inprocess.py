"""Run the ``training`` pipeline's stages in this process, one after another.

No kfp runner, no subprocesses: each stage's own kfp component body (``python_func``) is
called with artifacts in a work folder, wired as the stage graph says
(:mod:`components.stages`), with the pipeline's parameter values. What it runs is what a
task runs, without the cost of a process, an image or kfp's executor around it: the
baseline of ``make bench-pipeline``, and a quick way for tests to build a packaged model.

    from pipelines import inprocess
    result = inprocess.run(params, work=Path("build/inprocess"), data_root=".")
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import stages
from components.config import Params
from components.errors import SlipwayError


@dataclass
class StageResult:
    """A stage's outputs (artifacts by name, its return value as ``Output``) and time."""

    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def parameter_values(params: Params, data_root: str | Path, code_dir: str | Path,
                     **extra: Any) -> dict[str, Any]:
    """The ``training`` pipeline's parameter values for ``params``, as a local run passes
    them: the pipeline's own defaults, then the run's arguments."""
    from pipelines.local import arguments
    from pipelines.training import build

    inputs = build(params).component_spec.inputs or {}
    return {**{name: spec.default for name, spec in inputs.items()},
            **arguments(params, data_root, code_dir), **extra}


def _artifact_class(annotation: Any) -> type | None:
    from kfp.dsl.types import type_annotations

    if type_annotations.is_artifact_wrapped_in_Output(annotation):
        return type_annotations.get_io_artifact_class(annotation)
    return None


def run(params: Params, work: str | Path, data_root: str | Path = ".",
        code_dir: str | Path = ".", **values: Any) -> dict[str, StageResult]:
    """Run the ``training`` pipeline's stages in order in this process.

    Args:
        params: the settings.
        work: folder for the artifacts (one subfolder per stage).
        data_root: where dataset paths are relative to.
        code_dir: the git work tree recorded in the lineage.
        values: pipeline parameter values that differ from those of ``params``.

    Returns:
        Each stage's result by key; a stage whose ``when`` was false is absent.

    Raises:
        SlipwayError: a stage failed (its own message was printed on stderr).
    """
    work = Path(work)
    values = parameter_values(params, data_root, code_dir, **values)
    results: dict[str, StageResult] = {}
    aliases: dict[str, str] = {}  # a stage's `provides` name -> its key
    for stage in stages.stages_of("training"):
        if stage.when and not results[stage.when].outputs.get("Output"):
            continue
        func = stage.component().python_func
        args: dict[str, Any] = {}
        produced: dict[str, Any] = {}
        for name, param in inspect.signature(func).parameters.items():
            cls = _artifact_class(param.annotation)
            if cls is not None:
                (work / stage.key).mkdir(parents=True, exist_ok=True)
                produced[name] = args[name] = cls(name=name, uri=str(work / stage.key / name))
            elif name in stage.takes:
                source, output = stage.source(name)
                args[name] = results[aliases.get(source, source)].outputs[output]
            else:
                args[name] = values[stage.section if name == "rules" else name]
        started = time.perf_counter()
        try:
            produced["Output"] = func(**args)
        except SystemExit as err:  # reporting_errors: the message is on stderr already
            raise SlipwayError(f"stage {stage.key} failed (exit {err.code})",
                               "see its error above") from None
        results[stage.key] = StageResult(produced, time.perf_counter() - started)
        if stage.provides:
            aliases[stage.provides] = stage.key
    return results
