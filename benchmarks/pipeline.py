"""Benchmark: the ``training`` pipeline on each runner, cold and from the cache, and under DVC.

What it measures, side by side in one run (each measurement ``--repeat`` times, median and
min reported), on a file dataset (``auto_mpg`` unless ``--dataset`` names another):

(a)  the ``training`` pipeline with the subprocess runner (``make run``'s: one process per
     task), cold: a fresh pipeline root, so an empty cache;
(a1) a rerun with nothing changed: every cacheable task from the content-keyed cache (gate
     and package always run). Goal: at most 0.15 of (a);
(a2) a rerun after one byte of the data file changed in place (same path, same size): the
     data's content hash is in ingest's key, so every task runs again;
(b)  the same stages called one after the other in one fresh Python process
     (``pipelines.inprocess``: the component bodies, no runner), imports timed apart;
(c)  the containers runner (``make run RUNNER=containers``: every task in its role's image on
     podman), cold, and (c1) its rerun with nothing changed. Goal: (c) at most 1.3x (a).
     Skipped, and said so, where podman or the images are missing (``make images``);
(e)  ``dvc repro`` of dvc.yaml's one stage from scratch (no dvc.lock, no DVC cache, an empty
     kfp cache) and (e1) with nothing changed: DVC's own bookkeeping around the pipeline.

A second table gives each stage's median time as a subprocess task, as a container task
and in the single process.

Everything runs in a throw-away work area: a git repository made from the repository's
tracked files (copied from the working tree), ``data/auto-mpg.data`` copied in, its own
DVC remote (set up by ``pipelines.workspace`` as ``make setup`` does), its own BentoML
home (``BENTOML_HOME``, set before anything imports bentoml) and the environment's
``bin`` first on ``PATH`` so that dvc.yaml's ``python`` is this environment's.

    make bench-pipeline                                   # = python -m benchmarks.pipeline
    python -m benchmarks.pipeline --repeat 5 --no-containers --json out.json

Output: hardware and versions, one progress line per measurement, then the tables; the
results also go to ``build/benchmarks/pipeline.json``. Nothing here asserts on a time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from components.stages import PIPELINE_STAGES, STAGES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "build" / "benchmarks" / "pipeline.json"
DATA_FILE = "data/auto-mpg.data"
# The training pipeline's stages in order, by their kfp task names (the stage graph's).
TASKS = tuple(STAGES[key].task for key in PIPELINE_STAGES["training"])
# dvc.yaml's outputs (and dvc.lock): removed for a `dvc repro` from scratch.
DVC_OUTPUTS = ("models", "reports", "dvc.lock")
MEASUREMENTS = ("sub_cold", "sub_cached", "sub_byte", "inprocess", "ctr_cold", "ctr_cached",
                "dvc_scratch", "dvc_nochange")
DEFAULT_DATASET = "auto_mpg"  # a DVC-tracked file: the one-byte change needs one
# Imported up front by the in-process run, so that the stage times are the work itself.
PRELOAD = (
    "numpy", "pandas", "pyarrow.parquet", "pydantic", "yaml",
    "sklearn.datasets", "sklearn.model_selection", "sklearn.compose", "sklearn.impute",
    "sklearn.pipeline", "sklearn.preprocessing", "sklearn.metrics", "skops.io",
    "matplotlib.pyplot", "bentoml",
    "components.config", "components.ingest", "components.validate", "components.split",
    "components.preprocess", "components.train", "components.evaluate", "components.gate",
    "components.package",
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOG_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) - \w+ - (.*)$")
_TASK_START = re.compile(r"Executing task '([^']+)'")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")


class BenchmarkError(Exception):
    """A measured command failed: the benchmark stops and keeps its work area."""


# ---- environment facts ---------------------------------------------------------------

def hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024**2, 1)  # kB -> GiB
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
            "memory_gib": memory, "os": platform.platform(terse=True),
            "machine": platform.machine()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("kfp", "dvc", "scikit-learn", "bentoml", "pandas"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---- the work area ---------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path, log: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}  (exit {proc.returncode})\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BenchmarkError(f"`{' '.join(cmd)}` failed in {cwd} (exit {proc.returncode}):\n{tail}")
    return proc


class WorkArea:
    """A throw-away clone of the repository with its own DVC remote and BentoML home."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.root = Path(tempfile.mkdtemp(prefix="slipway-bench-"))
        self.repo = self.root / "repo"
        self.remote = self.root / "dvc-remote"
        self.dvc_site_cache = self.root / "dvc-site-cache"
        self.bentoml_home = self.root / "bentoml"
        self.kfp_roots = self.root / "kfp"
        self.scratch = self.root / "in-process"
        self.tmp = self.root / "tmp"
        self.log = self.root / "commands.log"
        self.bin_dir = Path(sys.executable).parent

    def environ(self) -> None:
        """BentoML home, PATH and TMPDIR for this process and every child it starts."""
        if "bentoml" in sys.modules:  # its store location is fixed at import
            raise BenchmarkError("bentoml was imported before BENTOML_HOME could be set")
        for d in (self.bentoml_home, self.tmp, self.kfp_roots, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        os.environ["BENTOML_HOME"] = str(self.bentoml_home)
        os.environ["PATH"] = os.pathsep.join([str(self.bin_dir), os.environ.get("PATH", "")])
        os.environ["TMPDIR"] = str(self.tmp)  # kfp.local's per-init workspaces land here
        tempfile.tempdir = None

    def create(self, dataset: str) -> None:
        listed = _run(["git", "-C", str(self.source), "ls-files", "-z"], self.source).stdout
        self.repo.mkdir(parents=True)
        for rel in filter(None, listed.split("\0")):
            src = self.source / rel
            if not (src.is_file() or src.is_symlink()):
                continue  # tracked but deleted in the working tree
            dst = self.repo / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
        data = next((p for p in (self.source / DATA_FILE,
                                 self.source / "data" / "seed" / Path(DATA_FILE).name)
                     if p.is_file()), None)
        if data is None:
            raise BenchmarkError(f"{DATA_FILE} is neither in data/ nor in data/seed/: "
                                 "run `make setup` (it restores the file)")
        shutil.copyfile(data, self.repo / DATA_FILE)
        params = self.repo / "params.yaml"
        text, count = re.subn(r"(?m)^dataset:[^\n#]*", f"dataset: {dataset}", params.read_text(),
                              count=1)
        if count != 1:
            raise BenchmarkError("params.yaml has no top-level `dataset:` line to set")
        params.write_text(text)
        git = ["git", "-c", "user.name=slipway-bench", "-c", "user.email=bench@localhost",
               "-c", "commit.gpgsign=false"]
        _run(["git", "init", "--quiet"], self.repo, self.log)
        _run(["git", "add", "-A"], self.repo, self.log)
        _run([*git, "commit", "--quiet", "-m", "benchmark work area"], self.repo, self.log)
        # Its own DVC remote, the way `make setup` sets one up.
        _run([sys.executable, "-m", "pipelines.workspace", "--remote", str(self.remote)],
             self.repo, self.log)
        # DVC's hash and index databases in the work area too, so `from scratch` is.
        self.dvc(["config", "--local", "core.site_cache_dir", str(self.dvc_site_cache)])

    def dvc(self, args: list[str]) -> subprocess.CompletedProcess:
        exe = self.bin_dir / "dvc"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dvc"]
        return _run([*cmd, *args], self.repo, self.log)

    def reset_dvc(self) -> None:
        """No dvc.lock, no outputs, no DVC cache (nor run cache), no hash database."""
        for rel in DVC_OUTPUTS:
            path = self.repo / rel
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for path in (self.repo / ".dvc" / "cache", self.repo / ".dvc" / "tmp",
                     self.dvc_site_cache, self.repo / "build" / "kfp-local"):
            shutil.rmtree(path, ignore_errors=True)

    def empty_model_store(self) -> None:
        shutil.rmtree(self.bentoml_home / "models", ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---- (a) and (d): kfp.local ------------------------------------------------------------

def _task_seconds(log_text: str) -> dict[str, float]:
    """Per-task wall time from kfp.local's log (millisecond timestamps)."""
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    for raw in log_text.splitlines():
        m = _LOG_LINE.match(_ANSI.sub("", raw))
        if not m:
            continue
        h, mi, s, ms, message = m.groups()
        t = int(h) * 3600 + int(mi) * 60 + int(s) + int(ms) / 1000
        if start := _TASK_START.search(message):
            started[start.group(1)] = t
        elif end := _TASK_END.search(message):
            name = end.group(1)
            if name in started:
                took[name] = round((t - started[name]) % 86400, 3)
    return took


def kfp_run(area: WorkArea, root: Path, runner: str = "subprocess") -> dict[str, Any]:
    """One run of the training pipeline with the project's kfp.local runner, cache on (a
    fresh ``root`` has an empty cache)."""
    from components.config import load_params
    from pipelines import local as kfp_local
    from pipelines.training import build

    params = load_params(area.repo / "params.yaml")
    params = params.model_copy(update={"kfp": params.kfp.model_copy(
        update={"pipeline_root": str(root)})})
    pipeline = build(params)
    arguments = kfp_local.arguments(params, area.repo, area.repo)
    terminal = io.StringIO()  # the runner's progress lines: kept out of the table
    # The tasks run in the work area, so they import its copy of the components.
    with contextlib.chdir(area.repo):
        started = time.perf_counter()
        result = kfp_local.run(pipeline, params, arguments, terminal=terminal, runner=runner)
        seconds = time.perf_counter() - started
    if not result.ok:
        raise BenchmarkError(f"kfp.local run failed (task(s) {', '.join(result.failed_tasks)});"
                             f" its log: {result.log}")
    tasks = _task_seconds(result.log.read_text())
    passed = result.summary.get("gate", {}).get("passed")
    return {
        "seconds": seconds,
        "tasks": tasks,
        "tasks_executed": len(tasks),
        "cache_hits": len(result.summary["reused"]),  # the hits kfp.local logged
        "gate_passed": passed,
        "log": str(result.log),
    }


# ---- (b): the stage cores in one process -------------------------------------------------

def inprocess_run(area: WorkArea, work: Path) -> dict[str, Any]:
    """The stage cores in one fresh Python process (the worker below), timed from outside."""
    env = dict(os.environ)
    # The worker runs in the work area (its components) and finds this module via REPO.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = work / "timings.json"
    cmd = [sys.executable, "-m", "benchmarks.pipeline", "--worker", str(work)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=area.repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BenchmarkError(f"in-process run failed (exit {proc.returncode}):\n{tail}")
    inner = json.loads(out.read_text())
    return {"seconds": seconds, **inner}


def _worker(work: Path) -> int:
    """Run the training pipeline's stages in this process (pipelines.inprocess): the same
    component bodies and cores as its tasks, with no runner around them."""
    begun = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")  # as evaluate does, before pyplot is imported
    for name in PRELOAD:
        importlib.import_module(name)
    from components.config import load_params
    from pipelines import inprocess

    imports = time.perf_counter() - begun
    repo = Path.cwd()
    results = inprocess.run(load_params(repo / "params.yaml"), work, repo, repo)
    stages = {STAGES[key].task: round(r.seconds, 4) for key, r in results.items()}
    version = results.get("package")
    record = {"imports": round(imports, 4), "stages": stages,
              "worker_seconds": round(time.perf_counter() - begun, 4),
              "gate_passed": bool(results["gate"].outputs["Output"]),
              "bentoml_tag": version and version.outputs["model_version"].metadata.get(
                  "bentoml_tag")}
    (work / "timings.json").write_text(json.dumps(record, indent=2))
    return 0


# ---- (a2): one byte of data, (c): containers, (e): dvc repro ----------------------------

def flip_one_byte(path: Path) -> None:
    """Change one digit of the data file in place: same path, same size, other bytes."""
    data = bytearray(path.read_bytes())
    at = next(i for i, c in enumerate(data) if chr(c).isdigit() and chr(c) not in "09")
    data[at] += 1
    path.write_bytes(bytes(data))


def containers_missing(dataset_roles: tuple[str, ...] = ("stages",)) -> str:
    """Why the containers runner cannot be measured here, or "" when it can."""
    from components.errors import SlipwayError
    from pipelines import containers, images

    try:
        containers.check_podman()
        images.require_built(dataset_roles)
    except SlipwayError as err:
        return f"{err.message} ({err.fix})"
    return ""


def dvc_repro(area: WorkArea) -> dict[str, Any]:
    started = time.perf_counter()
    proc = area.dvc(["repro"])
    seconds = time.perf_counter() - started
    output = proc.stdout + proc.stderr
    return {"seconds": seconds,
            "stages_run": len(re.findall(r"Running stage '", output)),
            "up_to_date": "up to date" in output or "didn't change" in output}


# ---- the plan, statistics and the report -------------------------------------------------

def summary(values: list[float]) -> dict[str, Any]:
    return {"runs": [round(v, 3) for v in values], "median": round(statistics.median(values), 3),
            "min": round(min(values), 3)}


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {"median": round(a["median"] / b["median"], 2), "min": round(a["min"] / b["min"], 2)}


def measure(area: WorkArea, repeat: int, containers: bool,
            say: Callable[[str], None]) -> dict[str, list]:
    """Every measurement ``repeat`` times, interleaved so that drift spreads evenly."""
    runs: dict[str, list] = {k: [] for k in MEASUREMENTS}
    width = len(str(repeat))
    data = area.repo / DATA_FILE

    def timed(i: int, key: str, label: str, fn: Callable[[], dict[str, Any]],
              note: Callable[[dict[str, Any]], str]) -> None:
        load = os.getloadavg()[0]  # other work on the machine skews a run: keep the load
        rec = {**fn(), "load_1m_before": round(load, 2)}
        runs[key].append(rec)
        say(f"  [{i + 1:>{width}}/{repeat}] {label:<44} {rec['seconds']:7.2f} s  "
            f"{note(rec)}; load {load:.1f}")

    def tasks_note(rec: dict[str, Any]) -> str:
        return f"{rec['tasks_executed']} tasks run, {rec['cache_hits']} from cache"

    original = data.read_bytes()
    for i in range(repeat):
        root = area.kfp_roots / f"sub{i + 1}"
        area.empty_model_store()
        timed(i, "sub_cold", "(a)  subprocess runner, cold",
              lambda root=root: kfp_run(area, root), tasks_note)
        timed(i, "sub_cached", "(a1) subprocess runner, rerun from cache",
              lambda root=root: kfp_run(area, root), tasks_note)
        flip_one_byte(data)
        try:
            timed(i, "sub_byte", "(a2) rerun after one byte of data changed",
                  lambda root=root: kfp_run(area, root), tasks_note)
        finally:
            data.write_bytes(original)

        area.empty_model_store()
        work = area.scratch / f"run{i + 1}"
        timed(i, "inprocess", "(b)  the stages in one Python process",
              lambda work=work: inprocess_run(area, work),
              lambda r: f"imports {r['imports']:.2f} s + stages {sum(r['stages'].values()):.2f} s")

        if containers:
            root = area.kfp_roots / f"ctr{i + 1}"
            area.empty_model_store()
            timed(i, "ctr_cold", "(c)  containers runner, cold",
                  lambda root=root: kfp_run(area, root, "containers"), tasks_note)
            timed(i, "ctr_cached", "(c1) containers runner, rerun from cache",
                  lambda root=root: kfp_run(area, root, "containers"), tasks_note)

        area.reset_dvc()
        area.empty_model_store()
        timed(i, "dvc_scratch", "(e)  dvc repro from scratch",
              lambda: dvc_repro(area), lambda r: f"{r['stages_run']} stage run")
        timed(i, "dvc_nochange", "(e1) dvc repro, nothing changed", lambda: dvc_repro(area),
              lambda r: f"{r['stages_run']} stages run" + (", up to date" if r["up_to_date"]
                                                            else ""))
    return runs


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def analyse(runs: dict[str, list]) -> dict[str, Any]:
    stats = {k: summary([r["seconds"] for r in v]) for k, v in runs.items() if v}
    pairs = {
        "orchestration_overhead_a_over_b": ("sub_cold", "inprocess"),
        "cached_rerun_over_cold": ("sub_cached", "sub_cold"),
        "byte_change_over_cold": ("sub_byte", "sub_cold"),
        "containers_over_subprocess": ("ctr_cold", "sub_cold"),
        "containers_cached_over_cold": ("ctr_cached", "ctr_cold"),
        "dvc_scratch_over_subprocess": ("dvc_scratch", "sub_cold"),
        "dvc_nochange_over_scratch": ("dvc_nochange", "dvc_scratch"),
    }
    ratios = {name: _ratio(stats[x], stats[y]) for name, (x, y) in pairs.items()
              if x in stats and y in stats}
    per_task = {}
    for task in TASKS:
        def med(key: str, field: str, task: str = task) -> float:
            return _median([r[field][task] for r in runs[key] if task in r.get(field, {})])

        per_task[task] = {"subprocess": med("sub_cold", "tasks"),
                          "containers": med("ctr_cold", "tasks"),
                          "in_process": med("inprocess", "stages")}
    n_tasks = _median([r["tasks_executed"] for r in runs["sub_cold"]])
    overhead = {m: round(stats["sub_cold"][m] - stats["inprocess"][m], 3)
                for m in ("median", "min")}
    timed = [r for v in runs.values() for r in v]
    return {
        "stats": stats,
        "ratios": ratios,
        "per_task": per_task,
        "inprocess_imports": _median([r["imports"] for r in runs["inprocess"]]),
        "inprocess_stages": _median([sum(r["stages"].values()) for r in runs["inprocess"]]),
        "kfp_tasks": n_tasks,
        "overhead_seconds": overhead,  # a - b
        "overhead_per_task_seconds": {m: round(v / n_tasks, 3) for m, v in overhead.items()},
        "cache_hits": {k: _median([r["cache_hits"] for r in runs[k]])
                       for k in ("sub_cold", "sub_cached", "sub_byte", "ctr_cold", "ctr_cached")
                       if runs[k]},
        "executed": {k: _median([r["tasks_executed"] for r in runs[k]])
                     for k in ("sub_cold", "sub_cached", "sub_byte", "ctr_cold", "ctr_cached")
                     if runs[k]},
        "dvc_stages_run": {k: _median([r["stages_run"] for r in runs[k]])
                           for k in ("dvc_scratch", "dvc_nochange")},
        "load_1m": {"min": min(r["load_1m_before"] for r in timed),
                    "max": max(r["load_1m_before"] for r in timed)},
    }


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measurement, median, min, notes) rows of the main table."""
    a = result["analysis"]
    s, r, hits, ran = a["stats"], a["ratios"], a["cache_hits"], a["executed"]
    n = int(a["kfp_tasks"])

    def sec(key: str) -> tuple[str, str]:
        return f"{s[key]['median']:.2f} s", f"{s[key]['min']:.2f} s"

    def ratio(key: str) -> str:
        return f"{r[key]['median']:.2f} / {r[key]['min']:.2f}"

    def tasks(key: str) -> str:
        return f"{ran[key]:g} of {n} tasks run, {hits[key]:g} from cache"

    rows = [
        ("(a)  subprocess runner, cold", *sec("sub_cold"), tasks("sub_cold")),
        ("(a1) subprocess runner, rerun from cache", *sec("sub_cached"),
         f"a1 / a = {ratio('cached_rerun_over_cold')} (goal <= 0.15); {tasks('sub_cached')}"),
        ("(a2) rerun after one byte of data changed", *sec("sub_byte"),
         f"a2 / a = {ratio('byte_change_over_cold')}; {tasks('sub_byte')}"),
        ("(b)  the stages in one Python process", *sec("inprocess"),
         f"imports {a['inprocess_imports']:.2f} s (once) + stages {a['inprocess_stages']:.2f} s"
         " + interpreter start and exit"),
        ("     orchestration overhead a / b", "", "",
         f"{ratio('orchestration_overhead_a_over_b')}; a - b per task "
         "{median:.2f} s / {min:.2f} s".format(**a["overhead_per_task_seconds"])),
    ]
    if "ctr_cold" in s:
        rows += [
            ("(c)  containers runner, cold", *sec("ctr_cold"),
             f"c / a = {ratio('containers_over_subprocess')} (goal <= 1.3); {tasks('ctr_cold')}"),
            ("(c1) containers runner, rerun from cache", *sec("ctr_cached"),
             f"c1 / c = {ratio('containers_cached_over_cold')}; {tasks('ctr_cached')}"),
        ]
    else:
        rows.append(("(c)  containers runner", "-", "-", result.get("containers_skipped", "")))
    rows += [
        ("(e)  dvc repro from scratch", *sec("dvc_scratch"),
         f"e / a = {ratio('dvc_scratch_over_subprocess')}: DVC's bookkeeping around (a)"),
        ("(e1) dvc repro, nothing changed", *sec("dvc_nochange"),
         f"{a['dvc_stages_run']['dvc_nochange']:g} stages run"),
    ]
    return rows


def stage_rows(result: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(stage, subprocess task, container task, in-process) median seconds."""
    per_task = result["analysis"]["per_task"]
    rows = [(t, v["subprocess"], v["containers"], v["in_process"]) for t, v in per_task.items()]
    rows.append(("all stages", *(sum(row[i] for row in rows) for i in (1, 2, 3))))
    return rows


def render(result: dict[str, Any]) -> str:
    a = result["analysis"]
    rows = table_rows(result)
    w0 = max(len(x[0]) for x in rows)
    rule = f"{'-' * w0}  {'-' * 9}  {'-' * 9}  {'-' * 44}"
    out = [f"{'measurement':<{w0}}  {'median':>9}  {'min':>9}  notes (x / y: median / min)",
           rule]
    out += [f"{a0:<{w0}}  {a1:>9}  {a2:>9}  {a3}".rstrip() for a0, a1, a2, a3 in rows]
    out += ["", "per stage, median seconds of a cold run (a task includes its process or "
                "container start and imports)",
            f"{'stage':<20}  {'subprocess':>10}  {'container':>10}  {'in-proc':>9}",
            f"{'-' * 20}  {'-' * 10}  {'-' * 10}  {'-' * 9}"]
    out += [f"{t:<20}  {k:>10.2f}  {c:>10.2f}  {i:>9.2f}" for t, k, c, i in stage_rows(result)]
    out.append(f"{'imports (once)':<20}  {'':>10}  {'':>10}  {a['inprocess_imports']:>9.2f}")
    return "\n".join(out)


def header(result: dict[str, Any]) -> str:
    h, v = result["hardware"], result["versions"]
    cores = f"{h['cores']} cores" + (f" ({h['usable_cores']} usable)"
                                     if h["usable_cores"] not in (None, h["cores"]) else "")
    return "\n".join([
        f"Slipway pipeline benchmark  {result['date']}",
        f"  hardware  {h['cpu']}, {cores}, {h['memory_gib']} GiB memory, {h['os']}",
        "  versions  " + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"  dataset   {result['dataset']} ({result['estimator']}); "
        f"{result['repeat']} repeat(s), median and min reported",
        f"  load      {result['load_1m_at_start']:.2f} (1-minute load average at start; "
        "other work on the machine slows every measurement)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (3)")
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help=f"a file dataset of params.yaml (default {DEFAULT_DATASET})")
    parser.add_argument("--no-containers", action="store_true",
                        help="skip the containers runner (c, c1)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"results file (default {DEFAULT_JSON.relative_to(REPO)})")
    parser.add_argument("--keep", action="store_true", help="keep the work area afterwards")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    def say(text: str) -> None:
        print(text, flush=True)

    area = WorkArea(REPO)
    area.environ()  # before anything below imports bentoml
    from components.config import load_params
    from components.errors import SlipwayError

    try:
        params = load_params(REPO / "params.yaml", [f"dataset={args.dataset}"])
        if getattr(params.dataset_spec, "path", None) != DATA_FILE:
            raise SlipwayError(f"dataset {args.dataset!r} is not the file {DATA_FILE}",
                               f"measure with --dataset {DEFAULT_DATASET} (the one-byte change "
                               "needs a data file)")
    except SlipwayError as err:
        area.remove()
        print(f"error: {err}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "benchmark": "pipeline",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "versions": versions(),
        "dataset": params.dataset,
        "estimator": f"{params.train.framework}/{params.train.estimator}",
        "repeat": args.repeat,
        "load_1m_at_start": round(os.getloadavg()[0], 2),
    }
    say(header(result))
    say(f"  work area {area.root}")
    try:
        area.create(params.dataset)
        skipped = "--no-containers" if args.no_containers else containers_missing()
        if skipped:
            result["containers_skipped"] = f"skipped: {skipped}"
            say(f"  containers runner {result['containers_skipped']}")
        say("measuring (one line per run):")
        runs = measure(area, args.repeat, not skipped, say)
    except BenchmarkError as err:
        print(f"error: {err}\n  work area kept for inspection: {area.root}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; work area kept: {area.root}", file=sys.stderr)
        return 130
    except BaseException:
        print(f"work area kept for inspection: {area.root}", file=sys.stderr)
        raise
    result["analysis"] = analyse(runs)
    result["runs"] = {k: [{x: y for x, y in r.items() if x != "log"} for r in v]
                      for k, v in runs.items()}
    say("")
    say(render(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    say(f"\nresults: {args.json}")
    if args.keep:
        say(f"work area kept: {area.root}")
    else:
        area.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
