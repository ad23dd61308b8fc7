"""``make runs``: recent local and remote runs side by side, like ``dvc exp show``.

    python -m pipelines runs [--limit 20] [--local-only] [--experiment NAME]

Local runs are read from kfp.local's run folders under ``kfp.pipeline_root`` (the same
reading as the summary ``make run`` prints: :func:`pipelines.local.read_summary`, with the
tasks a cached run reused taken from the cache entries its log names) and from the model
version each packaged (its ``lineage.json``). Remote runs come from the KFP endpoint
(``kfp.endpoint`` / ``KFP_HOST``): their state, and the parameters they were started with
compared with the version's defaults. The KFP API does not return a run's metrics, gate
decision or model version (they live in ML Metadata), so those columns are empty for
remote runs.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

_RUN_DIR = re.compile(r"^(?P<pipeline>[a-z][a-z0-9-]*?)-(?P<ts>\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d)"
                      r"-\d+$")
_LOG = re.compile(r"^(?P<pipeline>[a-z][a-z0-9-]*?)-(?P<ts>\d{8}-\d{6})\.log$")
_FINISHED = re.compile(r"Pipeline \S*'(?P<name>[^']+)'\S* finished with status \S*?(?P<state>"
                       r"SUCCESS|FAILURE)")
_HIT = re.compile(r"Task (\S+) cache hit \(key=([0-9a-f]+)\)")
TRIGGER_FILE = "trigger.json"  # written into a local run's folder by pipelines/trigger.py


@dataclass
class RunRow:
    """One line of the table."""

    where: str
    run: str
    pipeline: str
    started: str
    state: str
    dataset: str = ""
    model: str = ""
    params: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    gate: str = ""
    version: str = ""
    trigger: str = ""


def _section(value: Any) -> Any:
    """A settings section travels as its JSON text (components.config.to_parameter)."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a KFP parameter's ints travel as floats
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _key_params(train: dict[str, Any]) -> str:
    """The chosen estimator's settings, e.g. ``C=1 max_iter=2000``."""
    chosen = (train.get("hyperparameters") or {}).get(train.get("estimator"), {})
    return " ".join(f"{k}={_short(v)}" for k, v in sorted(chosen.items()))


def _logs_by_time(root: Path) -> list[tuple[datetime, Path]]:
    out = []
    for log in root.glob("*.log"):
        m = _LOG.match(log.name)
        if m:
            out.append((datetime.strptime(m["ts"], "%Y%m%d-%H%M%S"), log))
    return sorted(out)


def _log_for(started: datetime, pipeline: str, logs: list[tuple[datetime, Path]]
             ) -> Path | None:
    """The log a run wrote: named when the run was started, a few seconds before its
    folder."""
    best = None
    for when, log in logs:
        if log.name.startswith(f"{pipeline}-") and 0 <= (started - when).total_seconds() <= 10:
            best = log
    return best


def local_rows(root: str | Path, limit: int = 20) -> list[RunRow]:
    """The newest local runs under the pipeline root, newest first."""
    from pipelines.local import cache_entry, read_summary

    root = Path(root)
    if not root.is_dir():
        return []
    logs = _logs_by_time(root)
    dirs = []
    for d in root.iterdir():
        m = _RUN_DIR.match(d.name)
        if d.is_dir() and m:
            dirs.append((datetime.strptime(m["ts"], "%Y-%m-%d-%H-%M-%S"), m["pipeline"], d))
    rows = []
    for started, pipeline, run_dir in sorted(dirs, reverse=True)[:limit]:
        log = _log_for(started, pipeline, logs)
        text = log.read_text(errors="replace") if log else ""
        reused = {task: entry for task, key in _HIT.findall(text)
                  if (entry := cache_entry(root / ".kfp_cache", key)) is not None}
        summary = read_summary(run_dir, reused)
        finished = _FINISHED.search(re.sub(r"\x1b\[[0-9;]*m", "", text))
        row = RunRow("local", run_dir.name, pipeline,
                     started.strftime("%Y-%m-%d %H:%M:%S"), "RUNNING?")
        gate = summary.get("gate") or {}
        if finished:
            row.state = "SUCCEEDED" if finished["state"] == "SUCCESS" else "FAILED"
        elif summary.get("model_version") or gate:
            row.state = "SUCCEEDED"
        if ds := summary.get("dataset"):
            row.dataset = str(ds.get("name") or "")
        if model := summary.get("model"):
            row.model = f"{model.get('framework')}/{model.get('estimator')}"
        row.metrics = {k: float(v) for k, v in (summary.get("metrics") or {}).items()
                       if isinstance(v, int | float)}
        if gate:
            row.gate = "passed" if gate.get("passed") else "REJECTED"
        if version := summary.get("model_version"):
            row.version = str(version.get("version", ""))
            lineage = Path(version.get("path", "")) / "lineage.json"
            if lineage.is_file():
                row.params = _key_params(json.loads(lineage.read_text())
                                         .get("params", {}).get("train", {}))
        trigger = run_dir / TRIGGER_FILE
        if trigger.is_file():
            alert = json.loads(trigger.read_text())
            row.trigger = f"{alert.get('alertname', 'alert')} {alert.get('model_version', '')}"
        rows.append(row)
    return rows


def remote_rows(session: Any, experiment: str | None = None, limit: int = 20) -> list[RunRow]:
    """The newest runs on the KFP endpoint, with the parameters they changed."""
    from pipelines import kfp_api

    specs: dict[tuple[str, str], dict[str, Any]] = {}
    rows = []
    for run in kfp_api.list_runs(session, experiment, limit):
        ref = run.pipeline_version_reference
        defaults: dict[str, Any] = {}
        version = ""
        if ref and ref.pipeline_id and ref.pipeline_version_id:
            key = (ref.pipeline_id, ref.pipeline_version_id)
            if key not in specs:
                try:
                    with kfp_api.api_errors(session.endpoint, "reading a version"):
                        got = session.client.get_pipeline_version(*key)
                    doc = got.pipeline_spec or {}
                    doc = doc.get("pipeline_spec", doc)
                    spec = kfp_api.CompiledSpec(doc.get("pipelineInfo", {}).get("name", ""),
                                                Path("."), doc, None)
                    specs[key] = {"defaults": spec.defaults(), "name": spec.name,
                                  "version": got.display_name or ""}
                except Exception:  # noqa: BLE001 - a deleted version: show the run anyway
                    specs[key] = {"defaults": {}, "name": "", "version": ""}
            defaults = specs[key]["defaults"]
            version = specs[key]["version"]
        given = (run.runtime_config.parameters if run.runtime_config else None) or {}
        changed = []
        for name, value in sorted(given.items()):
            before = _flat(_section(defaults.get(name)), f"{name}.")
            after = _flat(_section(value), f"{name}.")
            changed += [f"{k}={_short(v)}" for k, v in sorted(after.items())
                        if before.get(k) != v]
        pipeline = specs.get((ref.pipeline_id, ref.pipeline_version_id), {}).get("name", "") \
            if ref else ""
        created = run.created_at
        started = created.strftime("%Y-%m-%d %H:%M:%S") if hasattr(created, "strftime") \
            else str(created or "")
        trigger = ""
        if run.description and run.description.startswith("retraining: "):
            trigger = run.description.removeprefix("retraining: ").split(";")[0]
        rows.append(RunRow("kfp", run.run_id, pipeline or run.display_name or "", started,
                           str(run.state or ""), params=" ".join(changed) or "(defaults)",
                           version=f"({version})" if version else "", trigger=trigger))
    return rows


def render(rows: list[RunRow], out: TextIO | None = None) -> None:
    """Print the rows as one table; a column per test metric found."""
    out = out or sys.stdout
    if not rows:
        out.write("no runs yet: `make run` (local) or `make submit` (KFP endpoint)\n")
        return
    metrics = sorted({m for r in rows for m in r.metrics})
    header = ["where", "run", "pipeline", "started", "state", "dataset", "model", "params",
              *metrics, "gate", "version", "trigger"]
    table = [[r.where, r.run, r.pipeline, r.started, r.state, r.dataset, r.model,
              r.params[:48], *[f"{r.metrics[m]:.4f}" if m in r.metrics else "-"
                               for m in metrics], r.gate, r.version, r.trigger]
             for r in rows]
    keep = [i for i, h in enumerate(header)
            if h in ("where", "run", "state") or any(row[i] not in ("", "-") for row in table)]
    widths = [max(len(header[i]), *(len(row[i]) for row in table)) for i in keep]
    out.write("  ".join(header[i].ljust(w) for i, w in zip(keep, widths, strict=True)).rstrip()
              + "\n")
    for row in table:
        out.write("  ".join((row[i] or "-").ljust(w) for i, w in zip(keep, widths, strict=True))
                  .rstrip() + "\n")
