"""Run a pipeline on this machine with kfp's embedded local runner, and summarise it.

kfp.local runs each task as a Python subprocess of this environment (no containers, no
cluster). Its full log (including each task's executor input) goes to
``<pipeline_root>/<run>.log``; the terminal shows one line per task with its time, the
stages' own messages, and at the end a summary of the run read from its artifacts.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from components.config import Params
from components.stages import STAGES, by_task
from pipelines.run_metrics import REPORT_TASK, REPORT_TITLE, created_now

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
# kfp.local logs a cache hit with the first 12 hex digits of the entry's key; the entry
# (<cache root>/<key>.json) holds the outputs it served, artifacts marked with this key.
_CACHE_HIT = re.compile(r"Task (\S+) cache hit \(key=([0-9a-f]+)\)")
_CACHED_ARTIFACT = "__kfp_artifact__"
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
        # By task name, first in first out: a ParallelFor's iterations share one name.
        self.started: dict[str, list[float]] = collections.defaultdict(list)
        self.executed: list[str] = []  # a name per task that ran (repeated for iterations)
        self.failed: list[str] = []
        self.reused: list[tuple[str, str]] = []  # (task, key prefix of the cache entry)
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
        if m := _CACHE_HIT.search(line):
            self.reused.append((m.group(1), m.group(2)))
            self.terminal.write(f"  ↺ {m.group(1)} reused from the kfp.local cache\n")
        elif m := _START.search(line):
            self.started[m.group(1)].append(time.perf_counter())
            self.executed.append(m.group(1))
            stage = by_task(m.group(1))
            title = (f" · {stage.title}" if stage else
                     f" · {REPORT_TITLE}" if m.group(1) == REPORT_TASK else "")
            self.terminal.write(f"  ▸ {m.group(1)}{title}\n")
        elif m := _END.search(line):
            name, state = m.groups()
            starts = self.started[name]
            took = time.perf_counter() - (starts.pop(0) if starts else time.perf_counter())
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


def _task_outputs(run_dir: Path, task: str,
                  reused: dict[str, Path] | None = None) -> dict[str, dict[str, Any]]:
    """A task's output artifacts in this run, by output name: ``{"uri", "metadata"}``.

    A task that ran wrote ``executor_output.json`` in this run's folder (not when it failed);
    a task that the kfp.local cache served has no folder here, and its outputs are those of
    the cache entry this run reused (``reused``: task -> entry file). Nothing else counts:
    the newest earlier run that has the task is not necessarily the one the cache reused,
    and after a failed run it would report that earlier run's results as this run's.
    """
    if (run_dir / task).is_dir():
        path = run_dir / task / "executor_output.json"
        outputs = json.loads(path.read_text()).get("artifacts", {}) if path.is_file() else {}
        return {name: out["artifacts"][0] for name, out in outputs.items()
                if out.get("artifacts")}
    entry = (reused or {}).get(task)
    try:
        outputs = json.loads(entry.read_text()) if entry is not None else {}
    except (OSError, ValueError):
        return {}
    return {name: out for name, out in outputs.items()
            if isinstance(out, dict) and out.get(_CACHED_ARTIFACT)}


def _meta(outputs: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return (outputs.get(name) or {}).get("metadata") or {}


def cache_entry(cache_root: Path, key_prefix: str) -> Path | None:
    """The kfp.local cache entry whose key starts with ``key_prefix`` (the part kfp.local
    logs on a cache hit); None when there is not exactly one."""
    entries = list(cache_root.glob(f"{key_prefix}*.json")) if key_prefix else []
    return entries[0] if len(entries) == 1 else None


def read_summary(run_dir: Path, reused: dict[str, Path] | None = None) -> dict[str, Any]:
    """Dataset, model, metrics, gate decision and model version of a training run.

    Only this run's results: what its tasks wrote, and for the tasks the kfp.local cache
    served, the cache entries it reused (``reused``: task -> entry file). A task that
    failed or never started contributes nothing.
    """
    def outputs(task: str) -> dict[str, dict[str, Any]]:
        return _task_outputs(run_dir, task, reused)

    out: dict[str, Any] = {}
    table = _meta(outputs(STAGES["ingest"].task), "table")
    if table:
        out["dataset"] = {k: table.get(k) for k in ("name", "source", "md5", "rows")}
    model = (_meta(outputs(STAGES["train"].task), "model")
             or _meta(outputs(STAGES["retrain"].task), "model"))
    if model:
        out["model"] = model
    best = _meta(outputs(STAGES["select"].task), "best")
    if best:
        out["best_trial"] = best
    uri = (outputs(STAGES["evaluate"].task).get("evaluation") or {}).get("uri")
    if uri and (Path(uri) / "metrics.json").is_file():
        out["metrics"] = json.loads((Path(uri) / "metrics.json").read_text())
        out["report"] = str(Path(uri) / "report.html")
    decision = _meta(outputs(STAGES["gate"].task), "decision")
    if decision:
        out["gate"] = decision
    version = outputs(STAGES["package"].task).get("model_version")
    if version and version.get("metadata"):
        out["model_version"] = {**version["metadata"], "path": version["uri"]}
    if said := _task_parameter(run_dir, REPORT_TASK, "Output"):
        out["run_metrics"] = said  # the exit task's answer (pipelines/run_metrics.py)
    return out


def _task_parameter(run_dir: Path, task: str, name: str) -> Any:
    """A parameter output of a task that ran in this run (never cached), or None."""
    path = run_dir / task / "executor_output.json"
    try:
        return json.loads(path.read_text()).get("parameterValues", {}).get(name)
    except (OSError, ValueError):
        return None


def arguments(params: Params, data_root: str | Path, code_dir: str | Path,
              dvc_remote: bool = False) -> dict[str, Any]:
    """The run's arguments that the settings do not give: where the data and the code are,
    the data's content hash (which keys the cache on the bytes of the data) and its DVC
    pointer. With ``dvc_remote`` (``pipelines run``: a run that versions what it trains),
    also the repository's DVC remote: data absent here is fetched from it and the packaged
    model version is pushed to it; without, "" (nothing leaves the machine)."""
    from components.dvc_remote import pipeline_arguments
    from components.ingest import content_key

    dvc = pipeline_arguments(getattr(params.dataset_spec, "path", None), data_root)
    return {"data_root": str(data_root), "code_dir": str(code_dir),
            "dataset_md5": content_key(params.dataset_spec, data_root),
            "dataset_pointer": dvc["dataset_pointer"],
            "dvc_remote": dvc["dvc_remote"] if dvc_remote else ""}


def _task_mounts(params: Params, arguments: dict[str, Any]) -> dict[str, str]:
    """The host paths a containerized task needs at their own paths: the dataset's file or
    folder under the data root (read only: only it, since the pipeline root may lie below
    the data root and must stay writable), and a local-directory DVC remote, which the
    package task pushes to."""
    mounts = {}
    path = getattr(params.dataset_spec, "path", None)
    if path and (Path(arguments.get("data_root", ".")) / path).exists():
        mounts[str(Path(arguments.get("data_root", ".")) / path)] = "ro"
    remote = json.loads(arguments.get("dvc_remote") or "null") or {}
    url = remote.get("url", "")
    if url and "://" not in url and Path(url).is_dir():
        mounts[url] = "rw"
    return mounts


def run(pipeline_func: Any, params: Params, arguments: dict[str, Any],
        terminal: TextIO = sys.stdout, cache: bool = True,
        runner: str = "subprocess") -> RunResult:
    """Run a built pipeline with kfp.local: ``runner`` "subprocess" (SubprocessRunner, this
    environment) or "containers" (DockerRunner on podman, :mod:`pipelines.containers`).

    Args:
        pipeline_func: the ``@dsl.pipeline`` function.
        params: the settings (for the pipeline root).
        arguments: pipeline arguments that differ from the defaults.
        terminal: where progress goes.
        cache: reuse the outputs of tasks whose inputs match an earlier local run.
            kfp.local's key covers a task's parameters, input artifacts, image and
            environment; the pipeline puts the data's content hash (``dataset_md5``) and
            each stage's code version (its environment) in there, so a changed byte of
            data, setting or stage code reruns the tasks it affects. Gate and package are
            never reused (the stage graph says so).
    """
    if runner == "containers":
        from components.stages import PIPELINE_STAGES, image_role, stages_of
        from pipelines.containers import docker_runner
        from pipelines.training import frameworks

        # The images of every role the pipeline's stages run in, checked before it starts
        # (a pipeline outside the stage graph: the stages image).
        used = frameworks(params)
        roles = tuple(sorted({image_role(s, used) for s in stages_of(pipeline_func.name)})) \
            if pipeline_func.name in PIPELINE_STAGES else ("stages",)
        with docker_runner(roles=roles, mounts=_task_mounts(params, arguments)) as task_runner:
            return _run(pipeline_func, params, arguments, terminal, cache, task_runner)
    if runner != "subprocess":
        raise ValueError(f"unknown runner {runner!r}: subprocess or containers")
    from kfp import local

    return _run(pipeline_func, params, arguments, terminal, cache,
                local.SubprocessRunner(use_venv=False))


def _run(pipeline_func: Any, params: Params, arguments: dict[str, Any], terminal: TextIO,
         cache: bool, task_runner: Any) -> RunResult:
    from kfp import local

    root = Path(params.kfp.pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cache_root = root / ".kfp_cache"
    local.init(runner=task_runner, pipeline_root=str(root),
               raise_on_error=True, enable_caching=cache, cache_root=str(cache_root))
    before = {p.name for p in root.iterdir()}
    log_path = root / f"{pipeline_func.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    started = time.perf_counter()
    ok = True
    with open(log_path, "w") as log:
        tee = _ConsoleFilter(terminal, log)
        saved = sys.stdout
        sys.stdout = tee
        # kfp.local logs a cache hit (the task and its entry's key) to the root logger
        # outside its own logging set-up, where INFO would be dropped: send it to the tee,
        # which records which entry each reused task came from.
        logger = logging.getLogger()
        saved_handlers, saved_level = logger.handlers[:], logger.level
        hits = logging.StreamHandler(tee)
        hits.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d - %(levelname)s - "
                                            "%(message)s", "%H:%M:%S"))
        logger.addHandler(hits)
        logger.setLevel(logging.INFO)
        try:
            with warnings.catch_warnings():
                # kfp.local warns per task that image, display name and caching settings do
                # not apply locally; the CLI says so once, up front.
                warnings.simplefilter("ignore")
                # The run's creation time, resolved as a KFP backend resolves it (kfp.local
                # 2.17 fails on that placeholder): the exit task's run duration starts there.
                with created_now(pipeline_func.pipeline_spec):
                    pipeline_func(**arguments)
        except RuntimeError as err:
            ok = False
            log.write(f"\n{err}\n")
        finally:
            logger.handlers[:] = saved_handlers
            logger.setLevel(saved_level)
            sys.stdout = saved
    seconds = time.perf_counter() - started
    # This run's folder: the new <pipeline>-<time> one (not the cache folder, which a
    # first cached run creates too).
    new = sorted((p for p in root.iterdir() if p.is_dir() and p.name not in before
                  and p.name.startswith(f"{pipeline_func.name}-")),
                 key=lambda p: p.stat().st_mtime)
    run_dir = new[-1] if new else root
    reused = {task: entry for task, key in tee.reused
              if (entry := cache_entry(cache_root, key)) is not None}
    summary = read_summary(run_dir, reused)
    summary["executed"] = sorted(tee.executed)
    summary["reused"] = sorted(task for task, _ in tee.reused)
    return RunResult(pipeline_func.name, run_dir, log_path, seconds, ok, tee.failed, summary)
