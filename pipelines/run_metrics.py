"""Push a pipeline run's metrics to a Prometheus Pushgateway.

After every run (``python -m pipelines run ...`` calls :func:`push_after_run`), when a
Pushgateway is configured (``monitoring.pushgateway`` in params.yaml, or the environment
variable ``SLIPWAY_PUSHGATEWAY``, which wins), the run's facts are pushed under the group
``job="slipway_pipeline", pipeline=<name>, model_name=<model>``. No run id is a label, so the
number of series stays bounded: one group per pipeline and model, each push replacing the
values of the metrics it carries.

* ``slipway_pipeline_last_run_timestamp_seconds`` - when the last run ended;
* ``slipway_pipeline_last_run_success`` - 1 if it succeeded (every task ran and, where a gate
  ran, the gate passed), else 0;
* ``slipway_pipeline_last_success_timestamp_seconds`` - when the last successful run ended
  (pushed only by successful runs: a failed run leaves the earlier value in place, which
  is what the "training stale" alert reads);
* ``slipway_pipeline_run_duration_seconds`` - the last run's wall time;
* ``slipway_pipeline_stage_duration_seconds{stage}`` - each task's wall time in that run
  (a ParallelFor's iterations: first start to last end); tasks served by the cache are
  absent;
* ``slipway_pipeline_test_metric{metric}`` - the evaluated model's test metrics;
* ``slipway_pipeline_gate_passed`` (1/0) and ``slipway_pipeline_gate_threshold{metric}``;
* ``slipway_pipeline_model_info{model_version, dataset, dataset_md5, framework, estimator}``
  - 1, for the model the last successful run packaged.

The push uses ``pushadd`` (HTTP POST): metrics this run does not carry (the gate, when the
run failed before it) keep the value of an earlier run. A push that fails is reported on
stderr and never fails the run.

    SLIPWAY_PUSHGATEWAY=http://127.0.0.1:9091 python -m pipelines run training
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_VAR = "SLIPWAY_PUSHGATEWAY"
JOB = "slipway_pipeline"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) - \w+ - "
                   r"(?:Executing task '([^']+)'|Task '([^']+)' finished with status \w+)")


def pushgateway_url(configured: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The Pushgateway to push to: ``SLIPWAY_PUSHGATEWAY`` if set (empty: none), else the
    params.yaml value."""
    environ = os.environ if environ is None else environ
    if ENV_VAR in environ:
        value = environ[ENV_VAR].strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{ENV_VAR}={value!r} is not an http(s) URL: write it as "
                             "http://<host>:9091, or leave it empty for no push")
        return value or None
    return configured or None


def stage_seconds_from_log(log: Path) -> dict[str, float]:
    """Each task's wall time from a kfp.local run log (its lines carry HH:MM:SS.mmm).

    A task that ran several times (ParallelFor iterations) spans its first start to its
    last end. A run that crosses midnight is handled (times only go forward).
    """
    spans: dict[str, list[float]] = {}
    last, day = None, 0.0
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for raw in lines:
        m = _LINE.match(_ANSI.sub("", raw))
        if not m:
            continue
        h, mi, s, ms = (int(x) for x in m.groups()[:4])
        t = h * 3600 + mi * 60 + s + ms / 1000 + day
        if last is not None and t < last - 1:
            day += 86400
            t += 86400
        last = t
        task = m.group(5) or m.group(6)
        span = spans.setdefault(task, [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)
    return {task: round(end - start, 3) for task, (start, end) in spans.items()
            if end > start}


def build_registry(pipeline: str, model_name: str, summary: Mapping[str, Any], ok: bool,
                   seconds: float, stage_seconds: Mapping[str, float] | None = None,
                   now: float | None = None):
    """A fresh ``CollectorRegistry`` holding one run's metrics (see the module docstring).

    Args:
        pipeline: the pipeline's name (``training``, ``tuning``).
        model_name: the model the pipeline builds (``params.model_name()``).
        summary: the run's summary (``RunResult.summary``: dataset, model, metrics, gate,
            model_version).
        ok: whether every task succeeded.
        seconds: the run's wall time.
        stage_seconds: wall time by task name (empty or None: no stage metric).
        now: the end of the run, in seconds since the epoch (default: now).
    """
    from prometheus_client import CollectorRegistry, Gauge

    now = time.time() if now is None else now
    reg = CollectorRegistry()

    def gauge(name: str, doc: str, labels=()):
        return Gauge(name, doc, list(labels), registry=reg)

    gate = summary.get("gate") or {}
    success = bool(ok) and bool(gate.get("passed", True))
    gauge("slipway_pipeline_last_run_timestamp_seconds",
          "When the last run of the pipeline ended.").set(now)
    gauge("slipway_pipeline_last_run_success",
          "1 if the last run succeeded (all tasks, and the gate where one ran), else 0."
          ).set(1 if success else 0)
    gauge("slipway_pipeline_run_duration_seconds",
          "Wall time of the last run.").set(float(seconds))
    if success:
        gauge("slipway_pipeline_last_success_timestamp_seconds",
              "When the last successful run ended.").set(now)
    if stage_seconds:
        g = gauge("slipway_pipeline_stage_duration_seconds",
                  "Wall time of each task in the last run (cache hits absent).", ["stage"])
        for stage, took in sorted(stage_seconds.items()):
            g.labels(stage=stage).set(float(took))
    if metrics := summary.get("metrics"):
        g = gauge("slipway_pipeline_test_metric", "Test metrics of the last evaluated model.",
                  ["metric"])
        for name, value in sorted(metrics.items()):
            if isinstance(value, int | float) and not isinstance(value, bool):
                g.labels(metric=name).set(float(value))
    if gate:
        gauge("slipway_pipeline_gate_passed",
              "1 if the gate passed the last evaluated model, else 0."
              ).set(1 if gate.get("passed") else 0)
        if gate.get("metric") is not None and gate.get("threshold") is not None:
            gauge("slipway_pipeline_gate_threshold", "The gate's threshold on its metric.",
                  ["metric"]).labels(metric=str(gate["metric"])).set(float(gate["threshold"]))
    version = summary.get("model_version") or {}
    if success and version.get("version"):
        dataset = summary.get("dataset") or {}
        model = summary.get("model") or {}
        gauge("slipway_pipeline_model_info",
              "The model version the last successful run packaged (value always 1).",
              ["model_version", "dataset", "dataset_md5", "framework", "estimator"]).labels(
            model_version=str(version["version"]), dataset=str(dataset.get("name", "")),
            dataset_md5=str(dataset.get("md5", "")),
            framework=str(model.get("framework", "")),
            estimator=str(model.get("estimator", ""))).set(1)
    return reg


def push(url: str, pipeline: str, model_name: str, registry, timeout: float = 10.0) -> None:
    """POST the registry's metrics to the Pushgateway group of this pipeline and model."""
    from prometheus_client import pushadd_to_gateway

    pushadd_to_gateway(url, job=JOB, registry=registry, timeout=timeout,
                       grouping_key={"pipeline": pipeline, "model_name": model_name})


def push_after_run(result: Any, params: Any, environ: Mapping[str, str] | None = None,
                   now: float | None = None) -> bool:
    """Push a local run's metrics if a Pushgateway is configured; say what happened.

    Args:
        result: the run's ``pipelines.local.RunResult``.
        params: the run's ``Params``.

    Returns:
        True if metrics were pushed, False if none is configured or the push failed (the
        reason is printed on stderr; the run's own outcome is not changed).
    """
    try:
        url = pushgateway_url(params.monitoring.pushgateway, environ)
    except ValueError as err:
        print(f"warning: run metrics not pushed: {err}", file=sys.stderr)
        return False
    if url is None:
        return False
    summary = result.summary or {}
    stages = summary.get("task_seconds") or stage_seconds_from_log(Path(result.log))
    model_name = params.model_name()
    registry = build_registry(result.pipeline, model_name, summary, result.ok and
                              not result.failed_tasks, result.seconds, stages, now)
    try:
        push(url, result.pipeline, model_name, registry)
    except OSError as err:  # URLError, connection refused, timeout
        print(f"warning: run metrics not pushed to {url}: {err} (is the Pushgateway up? "
              f"set monitoring.pushgateway or {ENV_VAR}=)", file=sys.stderr)
        return False
    print(f"  run metrics    pushed to {url} (job {JOB}, pipeline {result.pipeline}, "
          f"model_name {model_name})")
    return True

