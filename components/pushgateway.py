"""What the pipeline's tasks push to a Prometheus Pushgateway, from inside their bodies.

The pipeline (:mod:`pipelines.run_metrics`, when a Pushgateway is configured at compile
time) gives every task the environment variables :data:`URL_ENV`, :data:`PIPELINE_ENV` and
:data:`MODEL_ENV`; without all three a task pushes nothing. Each stage body, through
:func:`components.kfp_support.reporting_errors`, pushes its own wall time and, for some
stages, its facts; the pipeline's exit task pushes the run's final state
(:func:`push_run`). The metric names, their help texts and who pushes them are declared
once here, in :data:`METRICS`; ``pipelines/run_metrics.py``'s docstring explains them.

Groups: ``job="slipway_pipeline", pipeline, model_name`` for the facts, each metric name
pushed by one task only; plus ``stage`` for the stage durations, which every stage pushes.
A Pushgateway POST replaces every series of the metric names it carries within its group,
so one shared group for every stage's duration would keep only the last stage's. No label
carries a run id: the series stay bounded.

A push that fails prints a warning on stderr and never raises.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

URL_ENV = "SLIPWAY_PUSHGATEWAY"
PIPELINE_ENV = "SLIPWAY_METRICS_PIPELINE"
MODEL_ENV = "SLIPWAY_METRICS_MODEL_NAME"
JOB = "slipway_pipeline"
TIMEOUT_S = 10.0

# name -> (help, labels of its own, the task that pushes it)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "slipway_pipeline_last_run_timestamp_seconds": (
        "When the last run of the pipeline ended.", (), "exit"),
    "slipway_pipeline_last_run_success": (
        "1 if the last run succeeded (every task; a gate rejection is a successful run), "
        "else 0.", (), "exit"),
    "slipway_pipeline_run_duration_seconds": (
        "Wall time of the last run, from its creation to its exit task.", (), "exit"),
    "slipway_pipeline_stage_duration_seconds": (
        "Wall time of each stage's body in the last run that ran it (cache hits push "
        "nothing).", (), "every stage"),
    "slipway_pipeline_test_metric": (
        "Test metrics of the last evaluated model.", ("metric",), "evaluate"),
    "slipway_pipeline_gate_passed": (
        "1 if the gate passed the last evaluated model, else 0.", (), "gate"),
    "slipway_pipeline_gate_threshold": (
        "The gate's threshold on its metric.", ("metric",), "gate"),
    "slipway_pipeline_last_success_timestamp_seconds": (
        "When the last run that packaged a model packaged it.", (), "package"),
    "slipway_pipeline_model_info": (
        "The model version the last successful run packaged (value always 1).",
        ("model_version", "dataset", "dataset_md5", "framework", "estimator"), "package"),
}
STAGE_METRIC = "slipway_pipeline_stage_duration_seconds"


@dataclass(frozen=True)
class Target:
    """Where a task's metrics go: the Pushgateway and the group's labels."""

    url: str
    pipeline: str
    model_name: str

    def group(self, stage: str | None = None) -> dict[str, str]:
        """The grouping key (``job`` is given apart), with ``stage`` for a stage's time."""
        key = {"pipeline": self.pipeline, "model_name": self.model_name}
        return {**key, "stage": stage} if stage else key

    def describe(self) -> str:
        return (f"{self.url} (job {JOB}, pipeline {self.pipeline}, "
                f"model_name {self.model_name})")


def target(environ: Mapping[str, str] | None = None) -> Target | None:
    """The Pushgateway this task pushes to, from its environment; None unless the pipeline
    was compiled with one (all three variables set and not empty)."""
    environ = os.environ if environ is None else environ
    values = [environ.get(k, "").strip() for k in (URL_ENV, PIPELINE_ENV, MODEL_ENV)]
    return Target(*values) if all(values) else None


def registry(values: Mapping[str, Any]):
    """A fresh ``CollectorRegistry`` with ``values``: metric name -> a number, or a list of
    (labels, number) for a metric with labels of its own (:data:`METRICS`)."""
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    for name, value in values.items():
        doc, labels, _ = METRICS[name]
        gauge = Gauge(name, doc, list(labels), registry=reg)
        if labels:
            for label_values, number in value:
                gauge.labels(**{k: str(label_values[k]) for k in labels}).set(float(number))
        else:
            gauge.set(float(value))
    return reg


def push(values: Mapping[str, Any], stage: str | None = None,
         environ: Mapping[str, str] | None = None) -> bool:
    """POST ``values`` (see :func:`registry`) to this task's group; with ``stage``, to that
    stage's group. Returns whether they were pushed; a failure is a warning on stderr."""
    to = target(environ)
    if to is None or not values:
        return False
    try:
        from prometheus_client import pushadd_to_gateway

        pushadd_to_gateway(to.url, job=JOB, registry=registry(values), timeout=TIMEOUT_S,
                           grouping_key=to.group(stage))
    except Exception as err:  # noqa: BLE001 - a metric push never fails a task
        print(f"warning: run metrics not pushed to {to.url}: {err} (is the Pushgateway up? "
              f"it is compiled into the pipeline from monitoring.pushgateway or {URL_ENV})",
              file=sys.stderr, flush=True)
        return False
    return True


def evaluated(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluate stage's facts: its numeric test metrics."""
    rows = [({"metric": k}, v) for k, v in sorted(metrics.items())
            if isinstance(v, int | float) and not isinstance(v, bool)]
    return {"slipway_pipeline_test_metric": rows} if rows else {}


def gated(decision: Mapping[str, Any]) -> dict[str, Any]:
    """The gate stage's facts: passed (1/0) and its threshold on its metric."""
    out: dict[str, Any] = {"slipway_pipeline_gate_passed": 1 if decision.get("passed") else 0}
    if decision.get("metric") is not None and decision.get("threshold") is not None:
        out["slipway_pipeline_gate_threshold"] = [({"metric": decision["metric"]},
                                                   decision["threshold"])]
    return out


def packaged(version: str, dataset: str, dataset_md5: str, framework: str, estimator: str,
             now: float | None = None) -> dict[str, Any]:
    """The package stage's facts: the time of this success and the model version's info."""
    info = {"model_version": version, "dataset": dataset, "dataset_md5": dataset_md5,
            "framework": framework, "estimator": estimator}
    return {"slipway_pipeline_last_success_timestamp_seconds": time.time() if now is None
            else now, "slipway_pipeline_model_info": [(info, 1)]}


def run_started(created: str) -> float | None:
    """When the run was created, in seconds since the epoch: ``created`` is
    ``dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER`` as the runner resolved it (RFC 3339;
    a time without a zone is UTC); None when it was left unresolved or is not a time."""
    text = (created or "").strip()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def push_run(state: str, created: str, environ: Mapping[str, str] | None = None,
             now: float | None = None) -> str:
    """The exit task: push the run's end, its success (``state`` SUCCEEDED) and, when its
    start is known (:func:`run_started`), its duration.

    Returns:
        One line saying where the metrics went, or why not (the local run's summary shows
        it).
    """
    to = target(environ)
    if to is None:
        return "not pushed: no Pushgateway was compiled into this pipeline"
    now = time.time() if now is None else now
    values: dict[str, Any] = {"slipway_pipeline_last_run_timestamp_seconds": now,
                              "slipway_pipeline_last_run_success":
                                  1 if state == "SUCCEEDED" else 0}
    started = run_started(created)
    if started is not None and now >= started:
        values["slipway_pipeline_run_duration_seconds"] = round(now - started, 3)
    if not push(values, environ=environ):
        return f"NOT pushed to {to.url} (see the warning above)"
    note = "" if started is not None else ", run duration unknown (no creation time)"
    return f"pushed to {to.describe()}: last run {state.lower()}{note}"
