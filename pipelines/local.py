"""Run a pipeline on this machine with kfp's embedded local runner, and summarise it.

kfp.local runs each task as a Python subprocess of this environment (no containers, no
cluster). Its full log (including each task's executor input) goes to
``<pipeline_root>/<run>.log``; the terminal shows one line per task with its time, the
stages' own messages, and at the end a summary of the run read from its artifacts.
"""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from components.config import Params

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
# Lines of kfp.local's own that the terminal does not need (all of them go to the log):
# its timestamped INFO lines, the executor input JSON each task logs, the dump of a
# finished task's outputs, separators. Matched line by line, with no state, because the
# tasks of a ParallelFor run in threads and their lines interleave.
_NOISE = re.compile(
    r"""^\s*(
        $
      | \d\d:\d\d:\d\d\.\d+\ -\ [A-Z]+\ -          # kfp.local's logger
      | \[KFP\ Executor                              # the executor's logger
      | -{20,}$                                      # separators
      | [{}\[\]],?$                                  # JSON structure
      | "[^"]*"(:\ .*|,)?$                           # JSON keys and strings
      | (-?[\d.]+([eE][-+]?\d+)?|true|false|null),?$ # JSON scalars
      | \w+:\ \w+\(\ name=                           # outputs dump: "model: Model( name=..."
      | uri='                                        #   ... its uri
      | metadata=\{                                  #   ... its metadata
      | Output:\                                     #   ... a parameter output
    )""",
    re.VERBOSE,
)


class _ConsoleFilter(io.TextIOBase):
    """Tee for kfp.local's stdout: everything to the log, the essentials to the terminal.

    kfp.local prints from several threads when a ParallelFor runs its iterations at once,
    so writes are serialised and every line is judged on its own.
    """

    def __init__(self, terminal: TextIO, log: TextIO) -> None:
        self.terminal, self.log = terminal, log
        self.buffer = ""
        self.started: dict[str, float] = {}
        self.failed: list[str] = []
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.log.write(text)
            self.buffer += text
            while "\n" in self.buffer:
                line, self.buffer = self.buffer.split("\n", 1)
                self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def _line(self, line: str) -> None:
        if m := _START.search(line):
            self.started[m.group(1)] = time.perf_counter()
            self.terminal.write(f"  ▸ {m.group(1)}\n")
        elif m := _END.search(line):
            name, state = m.groups()
            took = time.perf_counter() - self.started.get(name, time.perf_counter())
            mark = "✓" if state == "SUCCESS" else "✗"
            if state != "SUCCESS":
                self.failed.append(name)
            self.terminal.write(f"  {mark} {name} {state.lower()} ({took:.1f} s)\n")
        elif not _NOISE.match(line):
            self.terminal.write(f"    {line.strip()}\n")  # a stage's own output
        self.terminal.flush()


@dataclass
class RunResult:
    """What a local run produced, read back from its artifacts."""

    pipeline: str
    run_dir: Path
    log: Path
    seconds: float
    ok: bool
    failed_tasks: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _executor_output(task_dir: Path) -> dict[str, Any]:
    path = task_dir / "executor_output.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _artifact_meta(task_dir: Path, name: str) -> dict[str, Any]:
    arts = _executor_output(task_dir).get("artifacts", {}).get(name, {}).get("artifacts", [])
    return arts[0].get("metadata", {}) if arts else {}


def _task_dir(run_dir: Path, task: str) -> Path:
    """Where a task's outputs are: this run's, or, for a task the kfp.local cache reused,
    those of the newest earlier run of the same pipeline that executed it."""
    if (run_dir / task).is_dir():
        return run_dir / task
    pipeline = run_dir.name.rsplit("-", 7)[0]  # <name>-YYYY-mm-dd-HH-MM-SS-micro
    earlier = sorted((p for p in run_dir.parent.glob(f"{pipeline}-*")
                      if (p / task / "executor_output.json").is_file()),
                     key=lambda p: p.stat().st_mtime)
    return earlier[-1] / task if earlier else run_dir / task


def read_summary(run_dir: Path) -> dict[str, Any]:
    """Dataset, model, metrics, gate decision and model version of a training run."""
    out: dict[str, Any] = {}
    table = _artifact_meta(_task_dir(run_dir, "ingest-op"), "table")
    if table:
        out["dataset"] = {k: table.get(k) for k in ("name", "source", "md5", "rows")}
    model = (_artifact_meta(_task_dir(run_dir, "train-op"), "model")
             or _artifact_meta(_task_dir(run_dir, "retrain-op"), "model"))
    if model:
        out["model"] = model
    best = _artifact_meta(_task_dir(run_dir, "select-op"), "best")
    if best:
        out["best_trial"] = best
    evaluation = _task_dir(run_dir, "evaluate-op") / "evaluation"
    if (evaluation / "metrics.json").is_file():
        out["metrics"] = json.loads((evaluation / "metrics.json").read_text())
        out["report"] = str(evaluation / "report.html")
    decision = _artifact_meta(run_dir / "gate-op", "decision")
    if decision:
        out["gate"] = decision
    version = _artifact_meta(run_dir / "package-op", "model_version")
    if version:
        out["model_version"] = {**version, "path": str(run_dir / "package-op" / "model_version")}
    return out


def run(pipeline_func: Any, params: Params, arguments: dict[str, Any],
        terminal: TextIO = sys.stdout, cache: bool = False) -> RunResult:
    """Run a built pipeline with kfp.local's SubprocessRunner.

    Args:
        pipeline_func: the ``@dsl.pipeline`` function.
        params: the settings (for the pipeline root).
        arguments: pipeline arguments that differ from the defaults.
        terminal: where progress goes.
        cache: reuse the outputs of tasks whose inputs match an earlier local run. Off by
            default: kfp.local's cache key covers a task's parameters and input artifacts,
            not the code of the stage cores nor the bytes of a data file behind a path.
    """
    from kfp import local

    root = Path(params.kfp.pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True, enable_caching=cache)
    before = {p.name for p in root.iterdir()}
    log_path = root / f"{pipeline_func.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    started = time.perf_counter()
    ok = True
    with open(log_path, "w") as log:
        tee = _ConsoleFilter(terminal, log)
        saved = sys.stdout
        sys.stdout = tee
        try:
            with warnings.catch_warnings():
                # kfp.local warns per task that image, display name and caching settings do
                # not apply locally; the CLI says so once, up front.
                warnings.simplefilter("ignore")
                pipeline_func(**arguments)
        except RuntimeError as err:
            ok = False
            log.write(f"\n{err}\n")
        finally:
            sys.stdout = saved
    seconds = time.perf_counter() - started
    new = sorted((p for p in root.iterdir() if p.is_dir() and p.name not in before),
                 key=lambda p: p.stat().st_mtime)
    run_dir = new[-1] if new else root
    summary = read_summary(run_dir)
    summary["executed"] = sorted(tee.started)
    return RunResult(pipeline_func.name, run_dir, log_path, seconds, ok, tee.failed, summary)
